//! Development aid: serves a volume backed by the in-memory store over NBD, to profile the NBD
//! server and the write path without any S3 server in the way.
//!
//! `cargo run --release --example serve_memory -- 127.0.0.1:10809 1GiB`

#![allow(clippy::unwrap_used)] // a developer tool, not product code

use std::sync::Arc;

use meridian_volume::format::{Layout, parse_size};
use meridian_volume::manage;
use meridian_volume::nbd::{self, Export};
use meridian_volume::{MemStore, Volume, WriterConfig};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:10809".into());
    let size = parse_size(&args.next().unwrap_or_else(|| "1GiB".into())).unwrap();
    let store = Arc::new(MemStore::new());
    let layout = Layout::new("", "disk").unwrap();
    manage::create(store.as_ref(), &layout, "disk", size, 4 << 20).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store, layout, WriterConfig::new(dir.path().into(), "mem".into())).await.unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    println!("serving nbd://{}/disk", listener.local_addr().unwrap());
    let export = Export { name: "disk".into(), description: "in-memory".into(), volume: vol, read_only: false };
    nbd::serve(listener, export, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .unwrap();
}
