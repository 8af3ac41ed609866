//! Real networks for the test network: each node in its own network
//! namespace, joined to the others by an emulated wide-area link.
//!
//! Every node gets a namespace (`caisse-<pid>-<i>`) holding two interfaces:
//!
//! - `wan0`, a TUN device with the node's federation address
//!   (`10.199.x.y/16`). Every packet a node sends to another caisse leaves
//!   its kernel's real TCP stack through `wan0`, is read by the link
//!   emulator in this process, held for the link's delay (with jitter, a
//!   rate limit and random loss), and written into the destination's
//!   `wan0`. A partition drops every packet of a node at the link: the TCP
//!   connections see what a cut line does, not a block list.
//! - `api0`, one end of a veth pair whose other end stays in the root
//!   namespace: the test network's tills and checks reach the node's HTTP
//!   API over it without delay, as a till on the caisse's own LAN would.
//!
//! Why a user-space link and not `tc netem`: the kernels here (and on CI's
//! machines) are built without `sch_netem` (`CONFIG_NET_SCH_NETEM` unset,
//! no modules): `tc qdisc add … netem` answers "Specified qdisc kind is
//! unknown". The emulator does what netem does for these profiles (delay,
//! jitter without reordering, loss, rate with a bounded queue) on TUN
//! devices, which every Linux kernel here has.
//!
//! Everything the run creates is removed when [`Wan`] is dropped (the
//! namespaces, and with them the TUN devices and veth pairs); namespaces
//! left by a run that was killed are removed by the next run.

use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use caisse_node::parliament::SplitMix64;
use serde_json::{Value, json};

/// What a wide-area link between caisses looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Its name (`lan`, `national`, `rural`).
    pub name: &'static str,
    /// Each node's distance from the network's core, drawn uniformly in
    /// this range (µs). The one-way delay between two nodes is the sum of
    /// their distances, so the round trip is twice that.
    pub distance_us: (u64, u64),
    /// Jitter added to each packet's delay, uniformly in ±this (µs).
    pub jitter_us: u64,
    /// Share of packets lost, in parts per million.
    pub loss_ppm: u32,
    /// Each node's uplink rate, in bits per second.
    pub rate_bps: u64,
}

impl Profile {
    /// A caisse's LAN: round trips of 0.4–1 ms, no loss, 1 Gbit/s.
    pub const LAN: Profile = Profile {
        name: "lan",
        distance_us: (100, 250),
        jitter_us: 50,
        loss_ppm: 0,
        rate_bps: 1_000_000_000,
    };
    /// Caisses across France over the internet: round trips of
    /// 10–150 ms, ±5 ms jitter, 0.1 % loss, 100 Mbit/s uplinks.
    pub const NATIONAL: Profile = Profile {
        name: "national",
        distance_us: (2_500, 37_500),
        jitter_us: 5_000,
        loss_ppm: 1_000,
        rate_bps: 100_000_000,
    };
    /// A caisse on a lossy rural line: round trips of 40–200 ms, ±15 ms
    /// jitter, 2 % loss, 8 Mbit/s uplinks.
    pub const RURAL: Profile = Profile {
        name: "rural",
        distance_us: (10_000, 50_000),
        jitter_us: 15_000,
        loss_ppm: 20_000,
        rate_bps: 8_000_000,
    };

    /// The profile named `name`; `None` for `none` (loopback, no emulation).
    pub fn by_name(name: &str) -> Result<Option<Profile>> {
        Ok(match name {
            "none" | "loopback" => None,
            "lan" => Some(Profile::LAN),
            "national" | "wan" => Some(Profile::NATIONAL),
            "rural" => Some(Profile::RURAL),
            other => bail!("--wan {other}: unknown profile (none, lan, national or rural)"),
        })
    }

    /// The profile's longest round trip between two nodes, in ms (without
    /// jitter): what its targets are stated against.
    pub fn max_rtt_ms(&self) -> f64 {
        4.0 * self.distance_us.1 as f64 / 1000.0
    }
}

/// One node's place in the emulated network.
#[derive(Clone, Debug)]
pub struct Place {
    /// Its network namespace.
    pub netns: String,
    /// Its federation address (on `wan0`).
    pub wan_ip: Ipv4Addr,
    /// Its API address (on `api0`, reachable from the root namespace).
    pub api_ip: Ipv4Addr,
    /// Its distance from the core (µs).
    pub distance_us: u64,
}

/// The emulated network of one run. Dropping it removes everything it made.
pub struct Wan {
    /// The profile every link follows.
    pub profile: Profile,
    /// Each node's place, by node index.
    pub places: Vec<Place>,
    emu: Arc<Emulator>,
    threads: Vec<JoinHandle<()>>,
}

impl Wan {
    /// Build namespaces and links for `n` nodes and start the emulator.
    pub fn create(n: usize, profile: Profile, seed: u64) -> Result<Wan> {
        preflight()?;
        remove_stale();
        let pid = std::process::id();
        let api_octet = free_octet(pid)?;
        let mut rng = SplitMix64(seed ^ 0x3a9_57ee1);
        let mut wan = Wan {
            profile: profile.clone(),
            places: Vec::new(),
            emu: Arc::new(Emulator {
                tuns: Vec::new(),
                distance_us: Vec::new(),
                by_ip: HashMap::new(),
                cut: (0..n).map(|_| AtomicBool::new(false)).collect(),
                profile: profile.clone(),
                queue: Mutex::new(Queue {
                    heap: BinaryHeap::new(),
                    last: HashMap::new(),
                    tx_free: vec![Instant::now(); n],
                    rng: SplitMix64(seed ^ 0x11ce),
                    seq: 0,
                }),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
                stats: Stats::default(),
            }),
            threads: Vec::new(),
        };
        let mut tuns = Vec::new();
        let mut by_ip = HashMap::new();
        for i in 0..n {
            let netns = format!("caisse-{pid}-{i}");
            let k = i as u32 + 1;
            let wan_ip = Ipv4Addr::new(10, 199, (k >> 8) as u8, (k & 0xff) as u8);
            let host_side = Ipv4Addr::new(10, api_octet, (i >> 6) as u8, ((i & 63) * 4 + 1) as u8);
            let api_ip = Ipv4Addr::from(u32::from(host_side) + 1);
            let (lo, hi) = profile.distance_us;
            let distance_us = lo + rng.below(hi - lo + 1);
            // Record the place first, so that Drop removes a half-made namespace.
            wan.places.push(Place {
                netns: netns.clone(),
                wan_ip,
                api_ip,
                distance_us,
            });
            ip(&["netns", "add", &netns])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            tuns.push(open_tun(&netns)?);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{wan_ip}/16"),
                "dev",
                "wan0",
            ])?;
            ip(&[
                "-n",
                &netns,
                "link",
                "set",
                "wan0",
                "mtu",
                &WAN_MTU.to_string(),
                "up",
            ])?;
            let host_if = format!("cz{pid}a{i}");
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "api0", "netns", &netns,
            ])?;
            ip(&["addr", "add", &format!("{host_side}/30"), "dev", &host_if])?;
            ip(&["link", "set", &host_if, "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{api_ip}/30"),
                "dev",
                "api0",
            ])?;
            ip(&["-n", &netns, "link", "set", "api0", "up"])?;
            by_ip.insert(wan_ip.octets(), i);
        }
        {
            let emu = Arc::get_mut(&mut wan.emu)
                .ok_or_else(|| anyhow!("the emulator is already running"))?;
            emu.tuns = tuns;
            emu.distance_us = wan.places.iter().map(|p| p.distance_us).collect();
            emu.by_ip = by_ip;
        }
        for i in 0..n {
            let emu = wan.emu.clone();
            wan.threads.push(
                std::thread::Builder::new()
                    .name(format!("wan-read-{i}"))
                    .spawn(move || emu.read_loop(i))?,
            );
        }
        let emu = wan.emu.clone();
        wan.threads.push(
            std::thread::Builder::new()
                .name("wan-deliver".into())
                .spawn(move || emu.deliver_loop())?,
        );
        Ok(wan)
    }

    /// The nominal round trip between nodes `i` and `j`, in ms.
    pub fn rtt_ms(&self, i: usize, j: usize) -> f64 {
        2.0 * (self.places[i].distance_us + self.places[j].distance_us) as f64 / 1000.0
    }

    /// Cut node `i` off (every packet to or from it dropped at the link),
    /// or mend the cut.
    pub fn cut(&self, i: usize, cut: bool) {
        if let Some(c) = self.emu.cut.get(i) {
            c.store(cut, Ordering::SeqCst);
        }
    }

    /// What the link did: packets forwarded and dropped, by cause.
    pub fn stats(&self) -> Value {
        let s = &self.emu.stats;
        let rtts: Vec<f64> = (0..self.places.len())
            .flat_map(|i| (i + 1..self.places.len()).map(move |j| (i, j)))
            .map(|(i, j)| self.rtt_ms(i, j))
            .collect();
        let (min, max) = rtts
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &r| (a.min(r), b.max(r)));
        let mean = if rtts.is_empty() {
            0.0
        } else {
            rtts.iter().sum::<f64>() / rtts.len() as f64
        };
        json!({
            "profile": self.profile.name,
            "mechanism": "a network namespace per node; TUN links through a user-space emulator (delay, jitter, loss, rate); API over a veth pair",
            "jitter_ms": self.profile.jitter_us as f64 / 1000.0,
            "loss_pct": self.profile.loss_ppm as f64 / 10_000.0,
            "rate_mbit_s": self.profile.rate_bps / 1_000_000,
            "rtt_ms": { "min": if rtts.is_empty() { 0.0 } else { min }, "mean": mean, "max": max, "profile_max": self.profile.max_rtt_ms() },
            "packets": {
                "forwarded": s.forwarded.load(Ordering::Relaxed),
                "lost": s.lost.load(Ordering::Relaxed),
                "cut": s.cut.load(Ordering::Relaxed),
                "queue_full": s.queue_full.load(Ordering::Relaxed),
                "unroutable": s.unroutable.load(Ordering::Relaxed),
            },
        })
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.emu.stop.store(true, Ordering::SeqCst);
        self.emu.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for p in &self.places {
            let _ = ip(&["netns", "del", &p.netns]);
        }
    }
}

/// Say plainly what is missing when this machine cannot build the network.
fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "--wan needs root (it creates network namespaces and TUN devices); run as root, or use --wan none for loopback"
        );
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("--wan needs /dev/net/tun (the kernel's TUN driver); use --wan none for loopback");
    }
    Command::new("ip").arg("-V").output().map_err(|e| {
        anyhow!("--wan needs `ip` from iproute2 ({e}); install it (Debian: apt-get install iproute2) or use --wan none")
    })?;
    Ok(())
}

/// Remove namespaces left by runs whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("caisse-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A second octet `X` such that no address of the root namespace is in
/// 10.X.0.0/16 (where the API links of this run go).
fn free_octet(pid: u32) -> Result<u8> {
    let out = Command::new("ip").args(["-4", "-o", "addr"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for k in 0..50u32 {
        let x = 200 + ((pid + k) % 50) as u8;
        if !text.contains(&format!(" 10.{x}.")) {
            return Ok(x);
        }
    }
    bail!("no free 10.200–249.0.0/16 range in the root namespace for the API links")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Open a TUN device named `wan0` inside namespace `netns` (from a thread
/// that enters it; the device stays there, the descriptor works anywhere).
fn open_tun(netns: &str) -> Result<File> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<File> {
            let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a namespace file we opened; it changes only
            // this short-lived thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {netns}: {}", std::io::Error::last_os_error());
            }
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .context("opening /dev/net/tun")?;
            // struct ifreq: 16 bytes of name, then the flags (a short).
            let mut req = [0u8; 40];
            req[..4].copy_from_slice(b"wan0");
            let flags: libc::c_short = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            req[16..18].copy_from_slice(&flags.to_ne_bytes());
            // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req`
            // is large enough to hold.
            if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) } < 0 {
                bail!("TUNSETIFF in {netns}: {}", std::io::Error::last_os_error());
            }
            // Non-blocking: the reader drains what is queued after each poll.
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let flags = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            Ok(tun)
        })
        .join()
        .map_err(|_| anyhow!("the thread opening a TUN device panicked"))?
    })
}

/// The links' MTU. TUN devices have no segmentation offload, so at 1,500
/// bytes every segment costs a read, a write and a pass through both TCP
/// stacks: on two cores shared by 30 nodes that doubled the run's wall
/// time. Links of `tc netem` on veth pairs carry 64 KiB GSO packets for the
/// same reason; this is the equivalent.
const WAN_MTU: u32 = 65_535;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Packets held back at most this long behind a node's uplink before they
/// are dropped (a router's buffer).
const MAX_QUEUE: Duration = Duration::from_millis(200);

struct Emulator {
    tuns: Vec<File>,
    /// Each node's distance from the core (µs).
    distance_us: Vec<u64>,
    by_ip: HashMap<[u8; 4], usize>,
    cut: Vec<AtomicBool>,
    profile: Profile,
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    forwarded: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
    queue_full: AtomicU64,
    unroutable: AtomicU64,
}

struct Queue {
    heap: BinaryHeap<std::cmp::Reverse<Pending>>,
    /// When the last packet from one node to another is delivered: packets
    /// of one path never overtake each other (jitter without reordering).
    last: HashMap<(usize, usize), Instant>,
    /// When each node's uplink is free again (the rate limit).
    tx_free: Vec<Instant>,
    rng: SplitMix64,
    seq: u64,
}

struct Pending {
    at: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl Emulator {
    /// Read what node `from` sends and schedule it.
    fn read_loop(&self, from: usize) {
        let mut buf = vec![0u8; 65_536];
        let mut tun = &self.tuns[from];
        while !self.stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready <= 0 {
                continue;
            }
            // Everything queued, then poll again (the descriptor is
            // non-blocking).
            loop {
                match tun.read(&mut buf) {
                    Ok(n) => self.route(from, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
        }
    }

    fn route(&self, from: usize, packet: &[u8]) {
        // IPv4 only; the destination address is at bytes 16..20.
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            self.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dst = [packet[16], packet[17], packet[18], packet[19]];
        let Some(&to) = self.by_ip.get(&dst) else {
            self.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.cut[from].load(Ordering::Relaxed) || self.cut[to].load(Ordering::Relaxed) {
            self.stats.cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let p = &self.profile;
        let now = Instant::now();
        let Ok(mut q) = self.queue.lock() else { return };
        if p.loss_ppm > 0 && q.rng.below(1_000_000) < u64::from(p.loss_ppm) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The uplink: serialise at the profile's rate behind what is queued.
        let start = q.tx_free[from].max(now);
        if start.duration_since(now) > MAX_QUEUE {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let tx = Duration::from_nanos(packet.len() as u64 * 8 * 1_000_000_000 / p.rate_bps);
        q.tx_free[from] = start + tx;
        let base = self.distance_us[from] + self.distance_us[to];
        let jitter = if p.jitter_us > 0 {
            q.rng.below(2 * p.jitter_us + 1) as i64 - p.jitter_us as i64
        } else {
            0
        };
        let delay_us = (base as i64 + jitter).max(0) as u64;
        let mut at = start + tx + Duration::from_micros(delay_us);
        if let Some(prev) = q.last.get(&(from, to)) {
            at = at.max(*prev);
        }
        q.last.insert((from, to), at);
        q.seq += 1;
        let seq = q.seq;
        // The delivery thread sleeps until the earliest packet is due: wake
        // it only when this one is due sooner (most are not), saving a
        // context switch per packet.
        let sooner = q.heap.peek().is_none_or(|p| at < p.0.at);
        q.heap.push(std::cmp::Reverse(Pending {
            at,
            seq,
            to,
            packet: packet.to_vec(),
        }));
        drop(q);
        if sooner {
            self.wake.notify_one();
        }
    }

    /// Write each packet into its destination when its time comes.
    fn deliver_loop(&self) {
        let Ok(mut q) = self.queue.lock() else { return };
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while q.heap.peek().is_some_and(|p| p.0.at <= now) {
                if let Some(std::cmp::Reverse(p)) = q.heap.pop() {
                    due.push(p);
                }
            }
            if !due.is_empty() {
                drop(q);
                for p in due {
                    // A cut made while the packet was on the line drops it too.
                    if self.cut[p.to].load(Ordering::Relaxed) {
                        self.stats.cut.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut tun = &self.tuns[p.to];
                    if tun.write(&p.packet).is_ok() {
                        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                q = match self.queue.lock() {
                    Ok(q) => q,
                    Err(_) => return,
                };
                continue;
            }
            let wait = q
                .heap
                .peek()
                .map_or(Duration::from_millis(100), |p| p.0.at.duration_since(now))
                .min(Duration::from_millis(100));
            q = match self.wake.wait_timeout(q, wait) {
                Ok((q, _)) => q,
                Err(_) => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_by_name_and_their_round_trips() {
        assert_eq!(Profile::by_name("none").unwrap(), None);
        assert_eq!(
            Profile::by_name("national").unwrap(),
            Some(Profile::NATIONAL)
        );
        assert_eq!(Profile::NATIONAL.max_rtt_ms(), 150.0);
        assert_eq!(Profile::NATIONAL.distance_us.0 * 4, 10_000);
        assert_eq!(Profile::RURAL.max_rtt_ms(), 200.0);
        let err = Profile::by_name("moon").unwrap_err().to_string();
        assert!(err.contains("none, lan, national or rural"), "{err}");
    }

    #[test]
    fn pending_packets_leave_in_time_order() {
        let now = Instant::now();
        let mut heap = BinaryHeap::new();
        for (i, ms) in [30u64, 10, 20, 10].iter().enumerate() {
            heap.push(std::cmp::Reverse(Pending {
                at: now + Duration::from_millis(*ms),
                seq: i as u64,
                to: 0,
                packet: Vec::new(),
            }));
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|p| p.0.seq)).collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }
}
