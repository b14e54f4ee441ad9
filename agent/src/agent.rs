//! The daemon: load and pin the kernel programs, program the services, attach, and run until
//! SIGINT/SIGTERM.

use std::time::Instant;

use anyhow::{Context as _, Result};
use geosteer_common::{ServiceKey, Settings};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    config::Config,
    dataplane::{BpfMaps, Dataplane as _},
    loader::{self, MapSizes},
    programmer::{DesiredBackend, DesiredService, Programmer},
};

/// The data path's view of the config: one entry per service port.
pub fn desired_services(config: &Config) -> Vec<DesiredService> {
    let mut out = Vec::new();
    for service in &config.services {
        for port in &service.ports {
            out.push(DesiredService {
                name: format!(
                    "{}/{}:{}/{}",
                    service.namespace, service.name, port.port, port.protocol
                ),
                key: ServiceKey {
                    addr: u32::from(service.vip).to_be(),
                    port: port.port.to_be(),
                    proto: port.protocol.number(),
                    _pad: 0,
                },
                backends: service
                    .endpoints
                    .iter()
                    .map(|e| DesiredBackend {
                        addr: u32::from(e.ip).to_be(),
                        port: port.target_port.to_be(),
                        weight: e.weight,
                        ..Default::default()
                    })
                    .collect(),
            });
        }
    }
    out
}

pub async fn run(config: Config) -> Result<()> {
    let dataplane = &config.dataplane;
    let mut ebpf = loader::load(MapSizes::from(dataplane), Some(&dataplane.pin_path))?;
    let mut maps = BpfMaps::take(&mut ebpf)?;
    maps.write_settings(&Settings {
        connect_timeout_ns: dataplane.connect_timeout.as_nanos() as u64,
    })?;

    let mut programmer = Programmer::new(dataplane.max_services, dataplane.max_backends);
    let started = Instant::now();
    let desired = desired_services(&config);
    let report = programmer.apply(&mut maps, &desired)?;
    info!(
        services = desired.len(),
        added = report.added,
        elapsed_us = started.elapsed().as_micros() as u64,
        "services programmed"
    );

    // Attach only after the services are in place: the first packet already finds them.
    let attached = loader::attach(&mut ebpf, dataplane)?;
    info!(
        node = %config.node.name,
        region = %config.node.region,
        attachments = attached.len(),
        pins = %dataplane.pin_path.display(),
        "ready"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: detaching"),
        _ = sigint.recv() => info!("SIGINT: detaching"),
    }
    // Dropping the object detaches every program; the pinned maps stay for the next start.
    drop(maps);
    drop(ebpf);
    info!("detached");
    Ok(())
}
