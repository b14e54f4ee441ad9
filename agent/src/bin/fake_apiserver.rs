//! `geosteer-fake-apiserver --listen IP:PORT`: the stand-in Kubernetes API server the
//! end-to-end tests run the real agent against (list, watch, discovery, status patches over
//! HTTP; objects put in and taken out through `/_fake/`, see `kube/fake_api.rs`). A test
//! fixture: it authenticates no one and keeps everything in memory.

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [flag, address] if flag == "--listen" => address.clone(),
        _ => bail!("usage: geosteer-fake-apiserver --listen IP:PORT"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        eprintln!(
            "geosteer-fake-apiserver: serving on {}",
            listener.local_addr()?
        );
        geosteer::kube::fake_api::FakeApi::standalone()
            .serve(listener)
            .await
            .context("serving")
    })
}
