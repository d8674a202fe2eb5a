//! Network namespaces for `sluice chaos --fault partition`: each backend node of the dev
//! cluster on a host of its own, so one can be cut off the network and joined again.

use std::process::Command;

use anyhow::{bail, Context};

/// Backend nodes each in a network namespace of their own, joined by a bridge, so that one can
/// be cut off the network and joined again (`sluice chaos --fault partition`). Needs root and
/// iproute2.
pub(crate) struct Netns {
    prefix: String,
    subnet: String,
    nodes: usize,
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
    pub(crate) fn setup(base: u16, nodes: usize) -> anyhow::Result<Netns> {
        let netns = Netns {
            prefix: format!("slc{base}"),
            subnet: format!("10.{}.{}", 100 + (base >> 8) % 100, base & 0xff),
            nodes,
        };
        // Leftovers of a run that was killed.
        netns.remove();
        let bridge = netns.bridge();
        let host = format!("{}/24", netns.host_ip());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &host, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..nodes {
            let (ns, outside, inside) = (
                netns.name(i),
                netns.link(i),
                format!("{}i{i}", netns.prefix),
            );
            let addr = format!("{}/24", netns.node_ip(i));
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

    pub(crate) fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// The outside end of node `i`'s link, on the bridge.
    fn link(&self, i: usize) -> String {
        format!("{}o{i}", self.prefix)
    }

    pub(crate) fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    pub(crate) fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
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

    fn remove(&self) {
        for i in 0..self.nodes {
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
