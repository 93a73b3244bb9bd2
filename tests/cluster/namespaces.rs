//! Ranks on two hosts that share no memory: two Linux network namespaces joined by veth
//! pairs on a bridge, with Open MPI's remote launcher pointed at a script that runs its
//! daemon inside the namespace of the address it was given. MPI traffic then crosses a
//! real (virtual) network, over TCP.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use super::{PARTS, on_three_ranks, place, sum_part};
use multiproc::prelude::*;

/// Runs `ip` with `args`; `Err` with what it said if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces, each with one address on a bridge in this one; removed on drop.
struct TestHosts {
    tag: String,
    names: [String; 2],
    subnet: String,
    addrs: [String; 2],
    agent: std::path::PathBuf,
}

impl TestHosts {
    fn new() -> Result<TestHosts, String> {
        let tag = format!("{:x}", std::process::id() % 0xffff);
        let net = 20 + std::process::id() % 200;
        let hosts = TestHosts {
            names: [format!("mpa{tag}"), format!("mpb{tag}")],
            subnet: format!("10.{net}.77.0/24"),
            addrs: [format!("10.{net}.77.1"), format!("10.{net}.77.2")],
            agent: std::env::temp_dir().join(format!("multiproc-netns-agent-{tag}")),
            tag,
        };
        hosts.build()?;
        Ok(hosts)
    }

    fn bridge(&self) -> String {
        format!("mpbr{}", self.tag)
    }

    fn build(&self) -> Result<(), String> {
        let bridge = self.bridge();
        let net = &self.subnet[..self.subnet.len() - 4];
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{net}254/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, ns) in self.names.iter().enumerate() {
            let (outer, inner) = (format!("mpv{i}{}", self.tag), format!("mpi{i}{}", self.tag));
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &outer, "master", &bridge, "up"])?;
            ip(&["link", "set", &inner, "netns", ns])?;
            let addr = format!("{}/24", self.addrs[i]);
            ip(&[
                "netns", "exec", ns, "ip", "addr", "add", &addr, "dev", &inner,
            ])?;
            ip(&["netns", "exec", ns, "ip", "link", "set", &inner, "up"])?;
            ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
        }
        // Open MPI's remote launcher: `agent HOST COMMAND…` runs COMMAND on HOST.
        let script = format!(
            "#!/bin/sh\nhost=\"$1\"; shift\ncase \"$host\" in\n  {}) ns={} ;;\n  {}) ns={} ;;\n  \
             *) echo \"no test host $host\" >&2; exit 1 ;;\nesac\nexec ip netns exec \"$ns\" /bin/sh -c \"$*\"\n",
            self.addrs[0], self.names[0], self.addrs[1], self.names[1]
        );
        std::fs::write(&self.agent, script).map_err(|e| e.to_string())?;
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&self.agent, mode).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for ns in &self.names {
            // Deleting a namespace deletes the veth pair with its inner end.
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
        let _ = std::fs::remove_file(&self.agent);
    }
}

#[test]
#[ignore = "rank 0 of an mpirun that tasks_run_on_ranks_in_two_network_namespaces starts"]
fn inner_namespaces() {
    let items: Vec<u64> = (0..600).collect();
    let places = items.par_map(place).unwrap();
    let by_rank: BTreeMap<u32, BTreeSet<String>> =
        places.into_iter().fold(BTreeMap::new(), |mut m, (r, ns)| {
            m.entry(r).or_default().insert(ns);
            m
        });
    assert_eq!(
        by_rank.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2],
        "{by_rank:?}"
    );
    assert_eq!(
        by_rank[&0], by_rank[&1],
        "ranks 0 and 1 share the first host"
    );
    assert_ne!(by_rank[&0], by_rank[&2], "rank 2 is on the other host");
    let ours = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();
    assert!(by_rank[&0].contains(&ours));
    // A shared slice reaches the other host too, and reads the same there.
    let n = PARTS * 10_000;
    let data = SharedSlice::from_slice(&(0..n as u64).collect::<Vec<_>>()).unwrap();
    let jobs: Vec<(SharedSlice<u64>, usize)> = (0..PARTS).map(|k| (data.clone(), k)).collect();
    let sums = Pool::builder()
        .cluster()
        .workers(1)
        .build()
        .unwrap()
        .map(sum_part, &jobs)
        .unwrap();
    for (k, (_, sum)) in sums.iter().enumerate() {
        let first = (k * 10_000) as u64;
        assert_eq!(*sum, (first..first + 10_000).sum::<u64>(), "part {k}");
    }
    assert!(sums.iter().any(|(r, _)| *r == 2), "rank 2 read the slice");
    println!("CLUSTER-OK {by_rank:?}");
}

#[test]
fn tasks_run_on_ranks_in_two_network_namespaces() {
    let root = is_root();
    if !root || Command::new("ip").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root, with iproute2 installed"
        );
        eprintln!("skipped: making network namespaces needs root and iproute2");
        return;
    }
    let hosts = TestHosts::new().unwrap();
    let net = hosts.subnet.clone();
    let agent = hosts.agent.display().to_string();
    let host_list = format!("{}:2,{}:1", hosts.addrs[0], hosts.addrs[1]);
    let stderr = on_three_ranks(
        &[
            "--host",
            &host_list,
            "--mca",
            "plm_rsh_agent",
            &agent,
            "--mca",
            "btl",
            "tcp,self",
            "--mca",
            "oob_tcp_if_include",
            &net,
            "--mca",
            "btl_tcp_if_include",
            &net,
            // One-sided windows over TCP: Debian's Open MPI turns `pt2pt` off.
            "--mca",
            "osc",
            "pt2pt",
            "-x",
            "MULTIPROC_CLUSTER_LOG=1",
        ],
        "namespaces::inner_namespaces",
        &[],
    );
    // Rank 2, on the other host, read the slice from rank 0's memory through the window.
    assert!(
        stderr.contains(&format!(
            "({} bytes) to rank 2: read through the window",
            PARTS * 80_000
        )),
        "{stderr}"
    );
    let names = hosts.names.clone();
    drop(hosts);
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !names.iter().any(|n| left.contains(n.as_str())),
        "left behind: {left}"
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
