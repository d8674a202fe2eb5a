//! Network namespaces for `sluice chaos`'s partitions: each backend node and each frontend of
//! the dev cluster on a host of its own, so one can be cut off the network, or off some of the
//! others only, and joined again.

use std::process::Command;

use anyhow::{bail, Context};

/// Backend nodes and frontends each in a network namespace of their own, joined by a bridge to
/// the host (where etcd, the metadata nodes and the managers run), so that one can be cut off
/// and joined again (`sluice chaos --fault partition`). Needs root and iproute2. Namespaces
/// are numbered nodes first, then frontends.
pub(crate) struct Netns {
    prefix: String,
    subnet: String,
    nodes: usize,
    frontends: usize,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Makes the bridge and `nodes` namespaces; names and the subnet come from `base`, so runs
    /// on other ports do not collide.
    pub(crate) fn setup(base: u16, nodes: usize, frontends: usize) -> anyhow::Result<Netns> {
        let netns = Netns {
            prefix: format!("slc{base}"),
            subnet: format!("10.{}.{}", 100 + (base >> 8) % 100, base & 0xff),
            nodes,
            frontends,
        };
        // Leftovers of a run that was killed.
        netns.remove();
        let bridge = netns.bridge();
        let host = format!("{}/24", netns.host_ip());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &host, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..nodes + frontends {
            let (ns, outside, inside) = (
                netns.name(i),
                netns.link(i),
                format!("{}i{i}", netns.prefix),
            );
            let addr = format!("{}/24", netns.ip_of(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &netns.host_ip(),
            ])?;
        }
        Ok(netns)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The name of namespace `i`: node `i`, or for `i` past the nodes a frontend.
    pub(crate) fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// The namespace of frontend `f`.
    pub(crate) fn frontend_name(&self, f: usize) -> String {
        self.name(self.nodes + f)
    }

    /// The outside end of node `i`'s link, on the bridge.
    fn link(&self, i: usize) -> String {
        format!("{}o{i}", self.prefix)
    }

    pub(crate) fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    fn ip_of(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }

    pub(crate) fn node_ip(&self, i: usize) -> String {
        self.ip_of(i)
    }

    pub(crate) fn frontend_ip(&self, f: usize) -> String {
        self.ip_of(self.nodes + f)
    }

    /// Cuts node `i` off the network, or joins it again.
    pub(crate) fn cut(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        ip(&[
            "link",
            "set",
            &self.link(i),
            if cut { "down" } else { "up" },
        ])
    }

    /// Cuts node `i` off its peers only, or joins it to them again: blackhole routes between
    /// its namespace and theirs, while the host (frontends, etcd, the chaos run's probes) still
    /// reaches every node. The partition a node whose links to the other replicas broke sees.
    pub(crate) fn cut_from_peers(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        let verb = if cut { "add" } else { "del" };
        for peer in (0..self.nodes).filter(|&peer| peer != i) {
            for (from, to) in [(i, peer), (peer, i)] {
                self.blackhole(from, to, verb)?;
            }
        }
        Ok(())
    }

    /// Cuts frontend `f` off every backend node, or joins it to them again, while clients and
    /// the metadata nodes still reach it: a frontend whose routes to a cluster broke.
    pub(crate) fn cut_frontend_from_backends(&self, f: usize, cut: bool) -> anyhow::Result<()> {
        let verb = if cut { "add" } else { "del" };
        for node in 0..self.nodes {
            for (from, to) in [(self.nodes + f, node), (node, self.nodes + f)] {
                self.blackhole(from, to, verb)?;
            }
        }
        Ok(())
    }

    /// Adds (`verb` "add") or removes ("del") a route in namespace `from` that drops what it
    /// sends to namespace `to`.
    fn blackhole(&self, from: usize, to: usize, verb: &str) -> anyhow::Result<()> {
        let route = format!("{}/32", self.ip_of(to));
        ip(&["-n", &self.name(from), "route", verb, "blackhole", &route])
    }

    fn remove(&self) {
        for i in 0..self.nodes + self.frontends {
            let _ = ip(&["netns", "del", &self.name(i)]);
            let _ = ip(&["link", "del", &self.link(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}
