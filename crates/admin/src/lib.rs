//! The admin front end: a JSON API (see [`api`]) on its own listener (served by the shared
//! [`meridian_http`] layer with [`meridian_http::Policy::admin`]), authenticated with a token,
//! and the `meridian admin` command that uses it.

pub mod api;
pub mod cli;
pub mod health;
pub mod status;

use http::{Request, Response};
use meridian_http::{RequestBody, RequestInfo, ResponseBody};

pub use api::AdminApi;

impl meridian_http::Handler for AdminApi {
    async fn handle(&self, req: Request<RequestBody>, info: RequestInfo) -> Response<ResponseBody> {
        match AdminApi::handle(self, req, &info).await {
            Ok(resp) => resp.map(meridian_http::boxed),
            Err(never) => match never {},
        }
    }
}
