//! The guest's network: configured from the `spinbox.net.*` kernel arguments (see
//! [`spinbox_protocol::net`]) before the agent announces readiness.
//!
//! In order: the `net` module group is loaded (virtio-net and its dependencies, never at
//! boot for VMs without a network); the NIC whose MAC the arguments name is awaited in
//! `/sys/class/net` (polled every 10 ms, for at most 5 s); then, over one rtnetlink socket,
//! `lo` is brought up, the NIC's MTU set (if given), each address added (IPv6 ones without
//! duplicate address detection: the address comes from the host's IPAM, and DAD would hold
//! it tentative for a second or more), the NIC brought up, and the routes added, on-link
//! ones first so that the gateways of the others are reachable. Last, `/etc/resolv.conf`
//! is written when there is at least one DNS item.
//!
//! Containers share the guest's network namespace. When the guest has a
//! `/etc/resolv.conf` written here, each container gets it bind-mounted read-only onto its
//! rootfs's `/etc/resolv.conf` (see the container's mount plan), as Docker does.
//!
//! The netlink messages are built by hand (a few fixed-layout headers and attributes), so
//! the static agent carries no netlink crate.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, MsgFlags};
use spinbox_protocol::net::{format_mac, GuestDns, GuestNetwork, GuestRoute, NetArgError};

use crate::init;

/// The kernel command line.
const CMDLINE: &str = "/proc/cmdline";
/// Where the network interfaces are listed.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// The guest's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The module group that holds the NIC's driver (see `on-demand` in [`init::MODULE_DIR`]).
const MODULE_GROUP: &str = "net";
/// How long the NIC may take to appear once its driver is loaded.
const LINK_WAIT: Duration = Duration::from_secs(5);
/// How often `/sys/class/net` is looked at meanwhile.
const LINK_POLL: Duration = Duration::from_millis(10);

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `/proc/cmdline` could not be read.
    #[error("cannot read {CMDLINE}")]
    Cmdline(#[source] io::Error),
    /// The `spinbox.net.*` arguments are malformed.
    #[error("bad network kernel arguments")]
    Args(#[source] NetArgError),
    /// The NIC's driver could not be loaded.
    #[error("cannot load the {MODULE_GROUP:?} module group")]
    Modules(#[source] init::InitError),
    /// No interface with the MAC appeared in time.
    #[error("no network interface with MAC {mac} after {waited:?}")]
    NoLink {
        /// The MAC looked for.
        mac: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A netlink request failed.
    #[error("cannot {what}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's (or the socket's) error.
        #[source]
        source: io::Error,
    },
    /// The resolver configuration could not be written.
    #[error("cannot write {RESOLV_CONF}")]
    ResolvConf(#[source] io::Error),
}

/// The resolver configuration this agent wrote, once written.
static GUEST_RESOLV_CONF: OnceLock<PathBuf> = OnceLock::new();

/// The guest's `/etc/resolv.conf`, when [`configure_from_cmdline`] wrote one (containers get
/// it bind-mounted read-only).
pub fn guest_resolv_conf() -> Option<&'static Path> {
    GUEST_RESOLV_CONF.get().map(PathBuf::as_path)
}

/// Configures the network the kernel command line describes, if it describes one; returns
/// the configuration applied. `modules` is the module directory (`None`: everything is built
/// in, or not PID 1). Blocking.
pub fn configure_from_cmdline(modules: Option<&Path>) -> Result<Option<GuestNetwork>, NetError> {
    let cmdline = std::fs::read_to_string(CMDLINE).map_err(NetError::Cmdline)?;
    let Some(net) = GuestNetwork::from_cmdline(&cmdline).map_err(NetError::Args)? else {
        return Ok(None);
    };
    let started = Instant::now();
    if let Some(dir) = modules {
        init::load_group(dir, MODULE_GROUP).map_err(NetError::Modules)?;
    }
    let (name, index) = wait_for_link(Path::new(SYS_CLASS_NET), net.mac, LINK_WAIT)?;
    configure_link(&net, index)?;
    if let Some(text) = render_resolv_conf(&net.dns) {
        write_resolv_conf(Path::new(RESOLV_CONF), &text).map_err(NetError::ResolvConf)?;
        let _ = GUEST_RESOLV_CONF.set(RESOLV_CONF.into());
    }
    tracing::info!(
        link = %name,
        mac = %format_mac(net.mac),
        addresses = ?net.addresses,
        routes = net.routes.len(),
        elapsed = ?started.elapsed(),
        "network configured"
    );
    Ok(Some(net))
}

/// Polls `sys_class_net` until an interface with `mac` appears: its name and index.
fn wait_for_link(
    sys_class_net: &Path,
    mac: [u8; 6],
    wait: Duration,
) -> Result<(String, u32), NetError> {
    let started = Instant::now();
    loop {
        if let Some(found) = find_link(sys_class_net, mac) {
            return Ok(found);
        }
        if started.elapsed() >= wait {
            return Err(NetError::NoLink {
                mac: format_mac(mac),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(LINK_POLL);
    }
}

/// The interface of `sys_class_net` (`/sys/class/net`) whose `address` is `mac`: its name
/// and `ifindex`.
fn find_link(sys_class_net: &Path, mac: [u8; 6]) -> Option<(String, u32)> {
    let wanted = format_mac(mac);
    std::fs::read_dir(sys_class_net)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let dir = entry.path();
            let address = std::fs::read_to_string(dir.join("address")).ok()?;
            if !address.trim().eq_ignore_ascii_case(&wanted) {
                return None;
            }
            let index = std::fs::read_to_string(dir.join("ifindex")).ok()?;
            let index = index.trim().parse().ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), index))
        })
}

/// The routes in the order they are added: on-link routes first (in their order), then
/// the routes through a gateway (in theirs), whose gateway an on-link route (or an
/// address's prefix) makes reachable.
fn route_order(routes: &[GuestRoute]) -> Vec<&GuestRoute> {
    let (on_link, via): (Vec<_>, Vec<_>) = routes.iter().partition(|r| r.gateway.is_none());
    on_link.into_iter().chain(via).collect()
}

/// `/etc/resolv.conf` for `dns`; `None` when it has no item.
fn render_resolv_conf(dns: &GuestDns) -> Option<String> {
    use std::fmt::Write;
    if dns.is_empty() {
        return None;
    }
    let mut text = String::from("# Written by the spinbox agent from the kernel command line.\n");
    for ns in &dns.nameservers {
        let _ = writeln!(text, "nameserver {ns}");
    }
    if !dns.search.is_empty() {
        let _ = writeln!(text, "search {}", dns.search.join(" "));
    }
    if !dns.options.is_empty() {
        let _ = writeln!(text, "options {}", dns.options.join(" "));
    }
    Some(text)
}

/// Writes `text` to `path` (creating its directory), readable by all.
fn write_resolv_conf(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// Applies `net` to the interface `index` (and brings `lo` up), in the order the module
/// documentation gives.
fn configure_link(net: &GuestNetwork, index: u32) -> Result<(), NetError> {
    let fail = |what: String| move |source| NetError::Netlink { what, source };
    let mut nl = Netlink::open().map_err(fail("open a netlink socket".into()))?;
    let lo = loopback_index().map_err(fail("find the loopback interface".into()))?;
    nl.set_link(lo, true, None)
        .map_err(fail("bring lo up".into()))?;
    if let Some(mtu) = net.mtu {
        nl.set_link(index, false, Some(mtu))
            .map_err(fail(format!("set the MTU to {mtu}")))?;
    }
    for &(addr, prefix) in &net.addresses {
        nl.add_address(index, addr, prefix)
            .map_err(fail(format!("add the address {addr}/{prefix}")))?;
    }
    nl.set_link(index, true, None)
        .map_err(fail("bring the interface up".into()))?;
    for route in route_order(&net.routes) {
        nl.add_route(index, route).map_err(fail(format!(
            "add the route {}/{}{}",
            route.dst,
            route.prefix,
            route
                .gateway
                .map(|gw| format!(" via {gw}"))
                .unwrap_or_default()
        )))?;
    }
    Ok(())
}

/// The loopback interface's index (in the calling thread's network namespace).
fn loopback_index() -> io::Result<u32> {
    // SAFETY: a NUL-terminated string literal; the call reads nothing else.
    let index = unsafe { nix::libc::if_nametoindex(c"lo".as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// rtnetlink numbers (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`,
/// `linux/if_addr.h`): a stable kernel ABI.
mod abi {
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_REPLACE: u16 = 0x100;
    #[cfg(test)]
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const IFF_UP: u32 = 0x1;
    #[cfg(test)]
    pub const IFLA_ADDRESS: u16 = 1;
    #[cfg(test)]
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    #[cfg(test)]
    pub const IFLA_LINKINFO: u16 = 18;
    #[cfg(test)]
    pub const IFLA_INFO_KIND: u16 = 1;
    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const IFA_F_NODAD: u8 = 0x02;
    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_GATEWAY: u16 = 5;
    pub const RT_TABLE_MAIN: u8 = 254;
    pub const RTPROT_BOOT: u8 = 3;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RT_SCOPE_LINK: u8 = 253;
    pub const RTN_UNICAST: u8 = 1;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
}

/// An address's family byte and its bytes in network order.
fn ip_bytes(addr: std::net::IpAddr) -> (u8, Vec<u8>) {
    match addr {
        std::net::IpAddr::V4(a) => (abi::AF_INET, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (abi::AF_INET6, a.octets().to_vec()),
    }
}

/// A netlink request being built: the header (length filled in by [`Message::finish`]),
/// the fixed family header, then attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | abi::NLM_F_REQUEST | abi::NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        Message(buf)
    }

    fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self
    }

    /// Appends an attribute (padded to 4 bytes).
    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("attributes are small");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    /// Appends a nested attribute holding what `inner` appends.
    #[cfg(test)]
    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&kind.to_ne_bytes());
        inner(self);
        let len = u16::try_from(self.0.len() - start).expect("attributes are small");
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn finish(&mut self) -> &[u8] {
        self.pad();
        let len = u32::try_from(self.0.len()).expect("messages are small");
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        &self.0
    }
}

/// An rtnetlink socket that sends one request at a time and waits for its acknowledgement.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let fd = socket::socket(
            socket::AddressFamily::Netlink,
            socket::SockType::Raw,
            socket::SockFlag::SOCK_CLOEXEC,
            socket::SockProtocol::NetlinkRoute,
        )?;
        Ok(Netlink { fd, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` and waits for the kernel's acknowledgement (an `NLMSG_ERROR` with the
    /// request's sequence number; error 0 is success).
    fn request(&mut self, msg: &mut Message, seq: u32) -> io::Result<()> {
        let data = msg.finish();
        let sent = socket::send(self.fd.as_raw_fd(), data, MsgFlags::empty())?;
        if sent != data.len() {
            return Err(io::Error::other("short netlink send"));
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            if let Some(result) = find_ack(&buf[..n], seq)? {
                return result;
            }
        }
    }

    /// Brings interface `index` up (`up`) or leaves its state alone, and sets its MTU.
    fn set_link(&mut self, index: u32, up: bool, mtu: Option<u32>) -> io::Result<()> {
        let seq = self.next_seq();
        let mut msg = Message::new(abi::RTM_NEWLINK, 0, seq);
        let flags = if up { abi::IFF_UP } else { 0 };
        msg.bytes(&ifinfomsg(index, flags, flags));
        if let Some(mtu) = mtu {
            msg.attr(abi::IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(&mut msg, seq)
    }

    /// Adds (or replaces) `addr/prefix` on interface `index`.
    fn add_address(&mut self, index: u32, addr: std::net::IpAddr, prefix: u8) -> io::Result<()> {
        let seq = self.next_seq();
        let mut msg = Message::new(
            abi::RTM_NEWADDR,
            abi::NLM_F_CREATE | abi::NLM_F_REPLACE,
            seq,
        );
        let (family, bytes) = ip_bytes(addr);
        let flags = if family == abi::AF_INET6 {
            abi::IFA_F_NODAD
        } else {
            0
        };
        // struct ifaddrmsg: family, prefix length, flags, scope, index.
        msg.bytes(&[family, prefix, flags, abi::RT_SCOPE_UNIVERSE])
            .bytes(&index.to_ne_bytes())
            .attr(abi::IFA_LOCAL, &bytes)
            .attr(abi::IFA_ADDRESS, &bytes);
        self.request(&mut msg, seq)
    }

    /// Adds (or replaces) `route` through interface `index` in the main table.
    fn add_route(&mut self, index: u32, route: &GuestRoute) -> io::Result<()> {
        let seq = self.next_seq();
        let mut msg = Message::new(
            abi::RTM_NEWROUTE,
            abi::NLM_F_CREATE | abi::NLM_F_REPLACE,
            seq,
        );
        let (family, dst) = ip_bytes(route.dst);
        let scope = if route.gateway.is_some() {
            abi::RT_SCOPE_UNIVERSE
        } else {
            abi::RT_SCOPE_LINK
        };
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        msg.bytes(&[
            family,
            route.prefix,
            0,
            0,
            abi::RT_TABLE_MAIN,
            abi::RTPROT_BOOT,
            scope,
            abi::RTN_UNICAST,
        ])
        .bytes(&0u32.to_ne_bytes());
        if route.prefix > 0 {
            msg.attr(abi::RTA_DST, &dst);
        }
        msg.attr(abi::RTA_OIF, &index.to_ne_bytes());
        if let Some(gw) = route.gateway {
            msg.attr(abi::RTA_GATEWAY, &ip_bytes(gw).1);
        }
        self.request(&mut msg, seq)
    }

    /// Creates a virtual interface of `kind` (`dummy`, `ifb`) with no peer (tests only: the
    /// guest's NIC comes from its driver).
    #[cfg(test)]
    fn add_virtual_link(&mut self, kind: &str, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let seq = self.next_seq();
        let mut msg = Message::new(abi::RTM_NEWLINK, abi::NLM_F_CREATE | abi::NLM_F_EXCL, seq);
        let mut ifname = name.as_bytes().to_vec();
        ifname.push(0);
        msg.bytes(&ifinfomsg(0, 0, 0))
            .attr(abi::IFLA_IFNAME, &ifname)
            .attr(abi::IFLA_ADDRESS, &mac)
            .nested(abi::IFLA_LINKINFO, |m| {
                m.attr(abi::IFLA_INFO_KIND, kind.as_bytes());
            });
        self.request(&mut msg, seq)
    }
}

/// `struct ifinfomsg`: family (unspecified), padding, type, index, flags, change mask.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Looks through the netlink messages in `buf` for the acknowledgement of request `seq`:
/// `Some(Ok)` for success, `Some(Err)` for the kernel's error, `None` if absent.
fn find_ack(buf: &[u8], seq: u32) -> io::Result<Option<io::Result<()>>> {
    let u32_at = |at: usize| -> io::Result<u32> {
        buf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| io::Error::other("truncated netlink reply"))
    };
    let mut at = 0;
    while at + abi::NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(at)? as usize;
        if len < abi::NLMSG_HDRLEN || at + len > buf.len() {
            return Err(io::Error::other("malformed netlink reply"));
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if kind == abi::NLMSG_ERROR && u32_at(at + 8)? == seq {
            let code = u32_at(at + abi::NLMSG_HDRLEN)?.cast_signed();
            return Ok(Some(if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(code.saturating_neg()))
            }));
        }
        at += (len + 3) & !3;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinbox_protocol::net::GuestRoute;

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().expect("test address")
    }

    fn route(dst: &str, prefix: u8, gw: Option<&str>) -> GuestRoute {
        GuestRoute {
            dst: ip(dst),
            prefix,
            gateway: gw.map(ip),
        }
    }

    #[test]
    fn on_link_routes_come_first() {
        let routes = [
            route("0.0.0.0", 0, Some("10.22.0.1")),
            route("10.22.0.0", 16, None),
            route("10.9.0.0", 16, Some("10.22.0.1")),
            route("::", 0, Some("fd00::1")),
            route("fd00::", 64, None),
        ];
        let order: Vec<_> = route_order(&routes).into_iter().cloned().collect();
        assert_eq!(
            order,
            [
                routes[1].clone(),
                routes[4].clone(),
                routes[0].clone(),
                routes[2].clone(),
                routes[3].clone()
            ]
        );
    }

    #[test]
    fn resolv_conf_rendering() {
        assert_eq!(render_resolv_conf(&GuestDns::default()), None);
        let dns = GuestDns {
            nameservers: vec![ip("10.22.0.1"), ip("fd00::53")],
            search: vec!["example.org".into(), "svc.local".into()],
            options: vec!["ndots:2".into(), "edns0".into()],
        };
        assert_eq!(
            render_resolv_conf(&dns).expect("something to write"),
            "# Written by the spinbox agent from the kernel command line.\n\
             nameserver 10.22.0.1\n\
             nameserver fd00::53\n\
             search example.org svc.local\n\
             options ndots:2 edns0\n"
        );
        let only_search = GuestDns {
            search: vec!["example.org".into()],
            ..GuestDns::default()
        };
        assert_eq!(
            render_resolv_conf(&only_search).expect("something to write"),
            "# Written by the spinbox agent from the kernel command line.\nsearch example.org\n"
        );
    }

    #[test]
    fn resolv_conf_is_written_with_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/resolv.conf");
        write_resolv_conf(&path, "nameserver 10.0.0.1\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "nameserver 10.0.0.1\n"
        );
    }

    #[test]
    fn links_are_found_by_mac() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, mac, index) in [
            ("lo", "00:00:00:00:00:00", 1),
            ("eth0", "52:54:00:AB:cd:ef", 2),
        ] {
            let link = dir.path().join(name);
            std::fs::create_dir(&link).expect("mkdir");
            std::fs::write(link.join("address"), format!("{mac}\n")).expect("address");
            std::fs::write(link.join("ifindex"), format!("{index}\n")).expect("ifindex");
        }
        let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
        assert_eq!(find_link(dir.path(), mac), Some(("eth0".into(), 2)));
        let err = wait_for_link(dir.path(), [2, 0, 0, 0, 0, 9], Duration::from_millis(30))
            .expect_err("no such link");
        assert!(
            err.to_string()
                .starts_with("no network interface with MAC 02:00:00:00:00:09 after"),
            "{err}"
        );
    }

    #[test]
    fn acks_are_parsed() {
        // An error message: header, error code, then the request's header.
        let ack = |seq: u32, code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&abi::NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        assert!(matches!(find_ack(&ack(7, 0), 7), Ok(Some(Ok(())))));
        assert!(matches!(find_ack(&ack(7, 0), 8), Ok(None)));
        let both = [ack(3, 0), ack(4, -17)].concat();
        let err = find_ack(&both, 4)
            .expect("well formed")
            .expect("found")
            .expect_err("EEXIST");
        assert_eq!(err.raw_os_error(), Some(17));
        assert!(find_ack(&ack(1, 0)[..20], 1).is_err());
        let mut bad = ack(1, 0);
        bad[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(find_ack(&bad, 1).is_err());
    }

    /// Runs `f` on a thread in a new network namespace (never bound to a file: it goes away
    /// with the thread). `None` when namespaces cannot be created (not root).
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .ok()
                .map(|()| f())
        })
        .join()
        .expect("the namespace thread panicked")
    }

    /// An `ifreq` answer for `name` (the calling thread's network namespace): the name,
    /// then the 24-byte union the kernel filled.
    fn ifreq(name: &str, request: impl Copy + Into<IoctlRequest>) -> [u8; 40] {
        let sock = socket::socket(
            socket::AddressFamily::Inet,
            socket::SockType::Datagram,
            socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("inet socket");
        let mut buf = [0u8; 40];
        buf[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `buf` is as large as a `struct ifreq`, which is what these requests read
        // and write.
        let ret = unsafe { nix::libc::ioctl(sock.as_raw_fd(), request.into().0, buf.as_mut_ptr()) };
        assert!(ret >= 0, "ioctl on {name}: {}", io::Error::last_os_error());
        buf
    }

    /// An ioctl request number, whatever type the C library gives it.
    struct IoctlRequest(IoctlType);
    #[cfg(target_env = "musl")]
    type IoctlType = nix::libc::c_int;
    #[cfg(not(target_env = "musl"))]
    type IoctlType = nix::libc::c_ulong;
    impl From<IoctlType> for IoctlRequest {
        fn from(r: IoctlType) -> Self {
            IoctlRequest(r)
        }
    }

    /// What a link looks like from the calling thread: flags, MTU, MAC, primary IPv4
    /// address and netmask.
    fn observe_link(name: &str) -> (u16, u32, Vec<u8>, Vec<u8>, Vec<u8>) {
        use nix::libc::{SIOCGIFADDR, SIOCGIFFLAGS, SIOCGIFHWADDR, SIOCGIFMTU, SIOCGIFNETMASK};
        let flags = ifreq(name, SIOCGIFFLAGS);
        let mtu = ifreq(name, SIOCGIFMTU);
        let hw = ifreq(name, SIOCGIFHWADDR);
        let addr = ifreq(name, SIOCGIFADDR);
        let mask = ifreq(name, SIOCGIFNETMASK);
        (
            u16::from_ne_bytes([flags[16], flags[17]]),
            u32::from_ne_bytes([mtu[16], mtu[17], mtu[18], mtu[19]]),
            hw[18..24].to_vec(),
            addr[20..24].to_vec(),
            mask[20..24].to_vec(),
        )
    }

    /// A `/proc/thread-self/net` file (the calling thread's network namespace).
    fn proc_net(file: &str) -> String {
        std::fs::read_to_string(Path::new("/proc/thread-self/net").join(file)).expect("proc net")
    }

    #[test]
    fn configures_a_dummy_link_in_a_fresh_namespace() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let net = GuestNetwork {
            mac,
            mtu: Some(1400),
            addresses: vec![(ip("10.22.0.5"), 24), (ip("fd00:22::5"), 64)],
            routes: vec![
                route("0.0.0.0", 0, Some("10.9.0.1")),
                route("10.9.0.0", 16, None),
                route("::", 0, Some("fd00:22::1")),
            ],
            dns: GuestDns::default(),
        };
        // The gateway 10.9.0.1 is reachable only through the on-link route 10.9.0.0/16:
        // the kernel refuses the default route (ENETUNREACH) unless that one comes first.
        let result = in_new_netns(move || {
            let mut nl = Netlink::open().expect("netlink socket");
            // A dummy link, else an ifb one (some hosts lack the dummy driver); neither: there
            // is nothing to test against.
            nl.add_virtual_link("dummy", "spbx0", mac)
                .or_else(|_| nl.add_virtual_link("ifb", "spbx0", mac))?;
            // SAFETY: a NUL-terminated string literal.
            let index = unsafe { nix::libc::if_nametoindex(c"spbx0".as_ptr()) };
            assert_ne!(index, 0, "the dummy link has an index");
            configure_link(&net, index).expect("configure");
            // A second run replaces rather than fails.
            configure_link(&net, index).expect("configure again");
            Ok::<_, io::Error>((
                observe_link("lo").0,
                observe_link("spbx0"),
                proc_net("if_inet6"),
                proc_net("route"),
                proc_net("ipv6_route"),
            ))
        });
        let Some(Ok((lo_flags, link, inet6, routes4, routes6))) = result else {
            eprintln!("skipped: cannot create a network namespace with a dummy link: {result:?}");
            return;
        };
        let up = u16::try_from(abi::IFF_UP).expect("small");
        assert_ne!(lo_flags & up, 0, "lo is up");
        let (flags, mtu, hw, addr, mask) = link;
        assert_ne!(flags & up, 0, "the link is up");
        assert_eq!(mtu, 1400);
        assert_eq!(hw, mac);
        assert_eq!((addr, mask), (vec![10, 22, 0, 5], vec![255, 255, 255, 0]));
        // address, index, prefix length (hex), scope, flags, name.
        assert!(
            inet6.lines().any(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                // 0x82: permanent, and no duplicate address detection.
                f.len() == 6
                    && f[0] == "fd000022000000000000000000000005"
                    && f[2] == "40"
                    && f[4] == "82"
                    && f[5] == "spbx0"
            }),
            "{inet6}"
        );
        // Iface, Destination, Gateway, ..., Mask (u32 in host order, printed in hex).
        let bytes = |hex: &str| u32::from_str_radix(hex, 16).expect("hex").to_ne_bytes();
        let routes: Vec<_> = routes4
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 7 && f[0] == "spbx0")
            .map(|f| (bytes(f[1]), bytes(f[2]), bytes(f[7])))
            .collect();
        assert!(
            routes.contains(&([0, 0, 0, 0], [10, 9, 0, 1], [0, 0, 0, 0])),
            "default via 10.9.0.1: {routes4}"
        );
        assert!(
            routes.contains(&([10, 9, 0, 0], [0, 0, 0, 0], [255, 255, 0, 0])),
            "10.9.0.0/16 on-link: {routes4}"
        );
        // Destination, its length, source, its length, next hop, ..., device.
        assert!(
            routes6.lines().any(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                f.len() == 10
                    && f[0] == "0".repeat(32)
                    && f[1] == "00"
                    && f[4] == "fd000022000000000000000000000001"
                    && f[9] == "spbx0"
            }),
            "default via fd00:22::1: {routes6}"
        );
    }

    #[test]
    fn netlink_errors_name_the_step() {
        let result = in_new_netns(|| {
            let net = GuestNetwork {
                mac: [2, 0, 0, 0, 0, 1],
                addresses: vec![(ip("10.0.0.2"), 24)],
                ..GuestNetwork::default()
            };
            // No interface has index 999 in a fresh namespace.
            configure_link(&net, 999).map_err(|e| {
                let source = std::error::Error::source(&e).map(ToString::to_string);
                (e.to_string(), source)
            })
        });
        let Some(result) = result else {
            eprintln!("skipped: cannot create a network namespace");
            return;
        };
        let (what, source) = result.expect_err("no such interface");
        assert_eq!(what, "cannot add the address 10.0.0.2/24");
        assert!(source.is_some());
    }
}
