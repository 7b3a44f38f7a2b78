pub mod cache;
pub mod instruction;
