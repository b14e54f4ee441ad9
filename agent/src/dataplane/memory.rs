//! An in-memory [`Dataplane`]: the maps as plain collections, and a log of every write in the
//! order the kernel would observe it. For unit tests of the controller and the programmer
//! (no root, no kernel) and for benches of the agent's own cost.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Result;
use geosteer_common::{
    Addr6, BACKEND_FLAG_ACTIVE, Backend, BackendState, ServiceConfig, ServiceState, ServiceValue,
    Settings, TableChunk,
};

use super::Dataplane;
use crate::frontend::Frontend;

/// One map operation, as [`MemoryDataplane::log`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Backend(u32),
    BackendState(u32),
    Table(u32),
    BackendAddr6(u32),
    Service(Frontend),
    RemoveService(Frontend),
    Vip(IpAddr),
    RemoveVip(IpAddr),
    Settings,
    ServiceState(u32),
    ServiceConfig(u32),
    /// A synchronous grace period: nothing retired before it is still in use.
    GracePeriod,
    ForgetFlows {
        backend_id: u32,
        keep_http: bool,
    },
    CountConnectTimeouts {
        backend_id: u32,
        count: u32,
    },
    DismissConnectTimeouts {
        backend_id: u32,
    },
}

#[derive(Default)]
pub struct MemoryDataplane {
    pub backends: BTreeMap<u32, Backend>,
    pub backend_state: BTreeMap<u32, BackendState>,
    /// The table map's chunks, by index (unwritten ones read as zeros, as in the kernel).
    pub table_chunks: BTreeMap<u32, TableChunk>,
    pub backend_addrs6: BTreeMap<u32, Addr6>,
    pub services: BTreeMap<Frontend, ServiceValue>,
    pub vips: BTreeMap<IpAddr, u32>,
    pub settings: Settings,
    pub service_state: BTreeMap<u32, ServiceState>,
    pub service_config: BTreeMap<u32, ServiceConfig>,
    pub xdp_targets: BTreeMap<u32, bool>,
    /// Every write, in order.
    pub log: Vec<Write>,
    /// Background grace periods complete at once when true, never when false.
    pub background_grace: bool,
    requested_grace: u64,
    /// Table writes fail while true (a map write the kernel refuses).
    pub fail_table_writes: bool,
    /// VIPs whose writes fail.
    pub fail_vip_writes: std::collections::BTreeSet<IpAddr>,
    /// Services whose entry writes fail (a batch of them stops there, as the kernel's does).
    pub fail_service_writes: std::collections::BTreeSet<Frontend>,
}

impl MemoryDataplane {
    pub fn new() -> Self {
        Self {
            background_grace: true,
            ..Self::default()
        }
    }

    /// Whether `backend_id` is active and names `addr:port`, as [`super::BpfMaps`] and the
    /// timeout program check.
    fn names(&self, backend_id: u32, addr: IpAddr, port: u16) -> bool {
        let addr_matches = |b: &Backend| match addr {
            IpAddr::V4(ip) => b.addr == ip.to_bits().to_be(),
            IpAddr::V6(ip) => {
                b.addr == 0 && self.backend_addrs6.get(&backend_id) == Some(&Addr6::from_ip(ip))
            }
        };
        self.backends.get(&backend_id).is_some_and(|b| {
            b.flags & BACKEND_FLAG_ACTIVE != 0 && addr_matches(b) && b.port == port
        })
    }

    /// The log so far, emptied.
    pub fn take_log(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.log)
    }
}

impl Dataplane for MemoryDataplane {
    fn write_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends.insert(id, *backend);
        self.log.push(Write::Backend(id));
        Ok(())
    }

    fn write_backend_state(&mut self, id: u32, state: &BackendState) -> Result<()> {
        self.backend_state.insert(id, *state);
        self.log.push(Write::BackendState(id));
        Ok(())
    }

    fn write_table(&mut self, start: u32, chunks: &[TableChunk]) -> Result<()> {
        if self.fail_table_writes {
            anyhow::bail!("writing a table at {start}: refused");
        }
        for (i, chunk) in chunks.iter().enumerate() {
            self.table_chunks.insert(start + i as u32, *chunk);
        }
        self.log.push(Write::Table(start));
        Ok(())
    }

    fn write_backend_addrs6(&mut self, entries: &[(u32, Addr6)]) -> Result<()> {
        for &(id, addr) in entries {
            self.backend_addrs6.insert(id, addr);
            self.log.push(Write::BackendAddr6(id));
        }
        Ok(())
    }

    fn write_service(&mut self, key: &Frontend, value: &ServiceValue) -> Result<()> {
        if self.fail_service_writes.contains(key) {
            anyhow::bail!("writing service entry {key}: refused");
        }
        self.services.insert(*key, *value);
        self.log.push(Write::Service(*key));
        Ok(())
    }

    fn remove_service(&mut self, key: &Frontend) -> Result<()> {
        self.services.remove(key);
        self.log.push(Write::RemoveService(*key));
        Ok(())
    }

    fn write_vip(&mut self, addr: IpAddr, ports: u32) -> Result<()> {
        if self.fail_vip_writes.contains(&addr) {
            anyhow::bail!("writing VIP {addr}: refused");
        }
        self.vips.insert(addr, ports);
        self.log.push(Write::Vip(addr));
        Ok(())
    }

    fn remove_vip(&mut self, addr: IpAddr) -> Result<()> {
        self.vips.remove(&addr);
        self.log.push(Write::RemoveVip(addr));
        Ok(())
    }

    fn write_settings(&mut self, settings: &Settings) -> Result<()> {
        self.settings = *settings;
        self.log.push(Write::Settings);
        Ok(())
    }

    fn write_service_state(&mut self, id: u32, state: &ServiceState) -> Result<()> {
        self.service_state.insert(id, *state);
        self.log.push(Write::ServiceState(id));
        Ok(())
    }

    fn write_service_config(&mut self, id: u32, config: &ServiceConfig) -> Result<()> {
        self.service_config.insert(id, *config);
        self.log.push(Write::ServiceConfig(id));
        Ok(())
    }

    fn grace_period(&mut self) -> Result<()> {
        self.log.push(Write::GracePeriod);
        Ok(())
    }

    fn request_grace(&mut self, seq: u64) {
        self.requested_grace = self.requested_grace.max(seq);
    }

    fn grace_completed(&self) -> u64 {
        if self.background_grace {
            self.requested_grace
        } else {
            0
        }
    }

    fn set_xdp_target(&mut self, ifindex: u32, vouched: bool) -> Result<()> {
        self.xdp_targets.insert(ifindex, vouched);
        Ok(())
    }

    fn forget_flows(&mut self, backend_id: u32, keep_http: bool) -> Result<()> {
        self.log.push(Write::ForgetFlows {
            backend_id,
            keep_http,
        });
        Ok(())
    }

    /// Counted when the id names that endpoint and is active, as the kernel program decides.
    fn count_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
        count: u32,
    ) -> Result<bool> {
        let matches = self.names(backend_id, addr, port);
        if matches {
            self.log
                .push(Write::CountConnectTimeouts { backend_id, count });
        }
        Ok(matches)
    }

    fn dismiss_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
    ) -> Result<bool> {
        let matches = self.names(backend_id, addr, port);
        if matches {
            self.log.push(Write::DismissConnectTimeouts { backend_id });
        }
        Ok(matches)
    }

    fn sweep_flows(
        &mut self,
        _now_ns: u64,
        _budget: std::time::Duration,
    ) -> Result<Option<crate::conntrack::PassReport>> {
        Ok(None)
    }

    fn read_services(&self) -> Result<Vec<(Frontend, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn read_backend_addrs6(&self) -> Result<Vec<Addr6>> {
        let len = self.backend_addrs6.keys().last().map_or(0, |id| id + 1);
        Ok((0..len)
            .map(|id| self.backend_addrs6.get(&id).copied().unwrap_or_default())
            .collect())
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(id, b)| (*id, *b)).collect())
    }

    fn read_table(&self, start: u32, len: u32) -> Result<Vec<TableChunk>> {
        Ok((start..start + len)
            .map(|i| self.table_chunks.get(&i).copied().unwrap_or_default())
            .collect())
    }

    fn read_backend(&self, id: u32) -> Result<Backend> {
        Ok(self.backends.get(&id).copied().unwrap_or_default())
    }

    fn read_backend_state(&self, id: u32) -> Result<BackendState> {
        Ok(self.backend_state.get(&id).copied().unwrap_or_default())
    }

    fn read_backend_states(&self) -> Result<Vec<BackendState>> {
        Ok(by_index(&self.backend_state))
    }

    fn read_service_states(&self) -> Result<Vec<ServiceState>> {
        Ok(by_index(&self.service_state))
    }

    fn read_service_state(&self, id: u32) -> Result<ServiceState> {
        Ok(self.service_state.get(&id).copied().unwrap_or_default())
    }

    fn read_service_config(&self, id: u32) -> Result<ServiceConfig> {
        Ok(self.service_config.get(&id).copied().unwrap_or_default())
    }
}

/// `map`'s values indexed by key, as an array map's read gives them (missing keys zero).
fn by_index<T: Copy + Default>(map: &BTreeMap<u32, T>) -> Vec<T> {
    let len = map.keys().next_back().map_or(0, |&last| last as usize + 1);
    let mut values = vec![T::default(); len];
    for (&i, value) in map {
        values[i as usize] = *value;
    }
    values
}
