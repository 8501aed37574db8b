//! The guest's network configuration, carried on the kernel command line.
//!
//! The host runs the CNI plugins, then starts the VM with a virtio-net NIC whose MAC is the
//! CNI interface's. The guest kernel has no `CONFIG_IP_PNP` (so no `ip=`): the host passes
//! the CNI result as `spinbox.net.*` kernel arguments ([`GuestNetwork::to_kernel_args`]),
//! and the agent reads them back from `/proc/cmdline` ([`GuestNetwork::from_cmdline`]) and
//! configures the NIC before it announces readiness.
//!
//! # Format
//!
//! Each item is one kernel argument, at most [`MAX_ARG_LEN`] bytes, with no whitespace or
//! control characters:
//!
//! | argument | meaning |
//! |---|---|
//! | `spinbox.net.mac=52:54:00:12:34:56` | the NIC to configure (required, once) |
//! | `spinbox.net.mtu=1500` | its MTU (optional, once; 68..=65535) |
//! | `spinbox.net.addr=10.22.0.5/24` | an address (repeatable; IPv4 or IPv6) |
//! | `spinbox.net.route=0.0.0.0/0@10.22.0.1` | a route via a gateway (repeatable) |
//! | `spinbox.net.route=10.9.0.0/16` | an on-link route (repeatable) |
//! | `spinbox.net.dns=10.22.0.1` | a name server (repeatable) |
//! | `spinbox.net.search=example.org` | a search domain (repeatable) |
//! | `spinbox.net.dnsopt=ndots:2` | a resolver option (repeatable) |
//!
//! Search domains and resolver options are printable ASCII without whitespace or commas. A
//! route's destination has no bits set beyond its prefix, and its gateway is of the same
//! family. Repeated items keep their order.
//!
//! ```
//! use spinbox_protocol::net::{GuestNetwork, GuestRoute};
//! let net = GuestNetwork {
//!     mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
//!     addresses: vec![("10.22.0.5".parse().unwrap(), 24)],
//!     routes: vec![GuestRoute {
//!         dst: "0.0.0.0".parse().unwrap(),
//!         prefix: 0,
//!         gateway: Some("10.22.0.1".parse().unwrap()),
//!     }],
//!     ..GuestNetwork::default()
//! };
//! let args = net.to_kernel_args().unwrap();
//! assert_eq!(
//!     args,
//!     [
//!         "spinbox.net.mac=52:54:00:12:34:56",
//!         "spinbox.net.addr=10.22.0.5/24",
//!         "spinbox.net.route=0.0.0.0/0@10.22.0.1",
//!     ]
//! );
//! let cmdline = format!("console=ttyS0 {} quiet", args.join(" "));
//! assert_eq!(GuestNetwork::from_cmdline(&cmdline).unwrap(), Some(net));
//! assert_eq!(GuestNetwork::from_cmdline("console=ttyS0").unwrap(), None);
//! ```

use std::fmt;
use std::net::IpAddr;

/// The prefix every network kernel argument starts with.
pub const ARG_PREFIX: &str = "spinbox.net.";

/// The longest kernel argument [`GuestNetwork::to_kernel_args`] writes and
/// [`GuestNetwork::from_cmdline`] accepts, in bytes.
pub const MAX_ARG_LEN: usize = 200;

/// The smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u32 = 68;

/// The largest MTU accepted.
pub const MAX_MTU: u32 = 65_535;

const KEY_MAC: &str = "mac";
const KEY_MTU: &str = "mtu";
const KEY_ADDR: &str = "addr";
const KEY_ROUTE: &str = "route";
const KEY_DNS: &str = "dns";
const KEY_SEARCH: &str = "search";
const KEY_DNSOPT: &str = "dnsopt";

/// The guest's network configuration: one NIC, found by its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestNetwork {
    /// The NIC's MAC address (a unicast address).
    pub mac: [u8; 6],
    /// The NIC's MTU, if it is to be set ([`MIN_MTU`]..=[`MAX_MTU`]).
    pub mtu: Option<u32>,
    /// The NIC's addresses, with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The routes through the NIC.
    pub routes: Vec<GuestRoute>,
    /// The resolver configuration.
    pub dns: GuestDns,
}

/// A route through the guest's NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    /// The destination network (no bits set beyond `prefix`).
    pub dst: IpAddr,
    /// The destination's prefix length; 0 with an unspecified `dst` is a default route.
    pub prefix: u8,
    /// The gateway (same family as `dst`); `None` for an on-link route.
    pub gateway: Option<IpAddr>,
}

impl GuestRoute {
    /// Whether this is a default route (`0.0.0.0/0` or `::/0`).
    pub fn is_default(&self) -> bool {
        self.prefix == 0 && self.dst.is_unspecified()
    }
}

/// The guest's resolver configuration (`/etc/resolv.conf`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestDns {
    /// Name servers, in order.
    pub nameservers: Vec<IpAddr>,
    /// Search domains, in order.
    pub search: Vec<String>,
    /// Resolver options (`ndots:2`, `edns0`, ...), in order.
    pub options: Vec<String>,
}

impl GuestDns {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// Why a network configuration cannot be written as, or read from, kernel arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetArgError {
    /// A value is malformed or out of range.
    Invalid {
        /// The argument's key (`mac`, `addr`, ...).
        key: &'static str,
        /// The offending value (lossily printable).
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `spinbox.net.*` argument with a key this version does not know.
    UnknownKey(String),
    /// A `spinbox.net.*` argument without `=`.
    MissingValue(String),
    /// An argument that may appear once appeared again.
    Repeated(&'static str),
    /// Network arguments without `spinbox.net.mac`.
    MissingMac,
    /// An argument longer than [`MAX_ARG_LEN`].
    TooLong(String),
}

impl fmt::Display for NetArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid { key, value, why } => {
                write!(f, "invalid {ARG_PREFIX}{key} value {value:?}: {why}")
            }
            Self::UnknownKey(arg) => write!(f, "unknown network kernel argument {arg:?}"),
            Self::MissingValue(arg) => {
                write!(f, "network kernel argument {arg:?} has no `=value`")
            }
            Self::Repeated(key) => write!(f, "{ARG_PREFIX}{key} appears more than once"),
            Self::MissingMac => write!(
                f,
                "network kernel arguments without {ARG_PREFIX}{KEY_MAC} (which NIC?)"
            ),
            Self::TooLong(arg) => write!(
                f,
                "network kernel argument longer than {MAX_ARG_LEN} bytes: {arg:?}"
            ),
        }
    }
}

impl std::error::Error for NetArgError {}

fn invalid(key: &'static str, value: impl fmt::Display, why: &'static str) -> NetArgError {
    NetArgError::Invalid {
        key,
        value: value.to_string(),
        why,
    }
}

impl GuestNetwork {
    /// The kernel arguments that carry this configuration, in the order
    /// mac, mtu, addresses, routes, name servers, search domains, options. Validates
    /// every value as [`GuestNetwork::from_cmdline`] would.
    pub fn to_kernel_args(&self) -> Result<Vec<String>, NetArgError> {
        check_mac(self.mac)?;
        let mut args = vec![arg(KEY_MAC, &format_mac(self.mac))];
        if let Some(mtu) = self.mtu {
            check_mtu(mtu)?;
            args.push(arg(KEY_MTU, &mtu.to_string()));
        }
        for &(addr, prefix) in &self.addresses {
            check_address(addr, prefix)?;
            args.push(arg(KEY_ADDR, &format!("{addr}/{prefix}")));
        }
        for route in &self.routes {
            check_route(route)?;
            let mut value = format!("{}/{}", route.dst, route.prefix);
            if let Some(gw) = route.gateway {
                value.push('@');
                value.push_str(&gw.to_string());
            }
            args.push(arg(KEY_ROUTE, &value));
        }
        for ns in &self.dns.nameservers {
            check_nameserver(*ns)?;
            args.push(arg(KEY_DNS, &ns.to_string()));
        }
        for name in &self.dns.search {
            check_word(KEY_SEARCH, name)?;
            args.push(arg(KEY_SEARCH, name));
        }
        for opt in &self.dns.options {
            check_word(KEY_DNSOPT, opt)?;
            args.push(arg(KEY_DNSOPT, opt));
        }
        if let Some(long) = args.iter().find(|a| a.len() > MAX_ARG_LEN) {
            return Err(NetArgError::TooLong(long.clone()));
        }
        Ok(args)
    }

    /// The configuration on a kernel command line (`/proc/cmdline`'s contents), or `None`
    /// when no argument starts with [`ARG_PREFIX`]. Other arguments are ignored; a
    /// `spinbox.net.*` argument that is unknown, malformed, out of range or repeated (`mac`,
    /// `mtu`) is an error, as is a configuration without `mac`.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, NetArgError> {
        let mut net = GuestNetwork::default();
        let mut mac = None;
        let mut any = false;
        for token in cmdline.split_ascii_whitespace() {
            let Some(rest) = token.strip_prefix(ARG_PREFIX) else {
                continue;
            };
            any = true;
            if token.len() > MAX_ARG_LEN {
                return Err(NetArgError::TooLong(token.to_owned()));
            }
            let Some((key, value)) = rest.split_once('=') else {
                return Err(NetArgError::MissingValue(token.to_owned()));
            };
            match key {
                KEY_MAC => {
                    if mac.is_some() {
                        return Err(NetArgError::Repeated(KEY_MAC));
                    }
                    mac = Some(parse_mac(value)?);
                }
                KEY_MTU => {
                    if net.mtu.is_some() {
                        return Err(NetArgError::Repeated(KEY_MTU));
                    }
                    let mtu = value
                        .parse()
                        .map_err(|_| invalid(KEY_MTU, value, "not a number"))?;
                    check_mtu(mtu)?;
                    net.mtu = Some(mtu);
                }
                KEY_ADDR => {
                    let (addr, prefix) = parse_prefixed(KEY_ADDR, value)?;
                    check_address(addr, prefix)?;
                    net.addresses.push((addr, prefix));
                }
                KEY_ROUTE => {
                    let (net_part, gateway) = match value.split_once('@') {
                        Some((n, gw)) => (
                            n,
                            Some(gw.parse().map_err(|_| {
                                invalid(KEY_ROUTE, value, "the gateway is not an IP address")
                            })?),
                        ),
                        None => (value, None),
                    };
                    let (dst, prefix) = parse_prefixed(KEY_ROUTE, net_part)?;
                    let route = GuestRoute {
                        dst,
                        prefix,
                        gateway,
                    };
                    check_route(&route)?;
                    net.routes.push(route);
                }
                KEY_DNS => {
                    let ns = value
                        .parse()
                        .map_err(|_| invalid(KEY_DNS, value, "not an IP address"))?;
                    check_nameserver(ns)?;
                    net.dns.nameservers.push(ns);
                }
                KEY_SEARCH => {
                    check_word(KEY_SEARCH, value)?;
                    net.dns.search.push(value.to_owned());
                }
                KEY_DNSOPT => {
                    check_word(KEY_DNSOPT, value)?;
                    net.dns.options.push(value.to_owned());
                }
                _ => return Err(NetArgError::UnknownKey(token.to_owned())),
            }
        }
        if !any {
            return Ok(None);
        }
        net.mac = mac.ok_or(NetArgError::MissingMac)?;
        Ok(Some(net))
    }
}

/// Formats a MAC as six lower-case hex pairs separated by colons.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses six hex pairs separated by colons (either case) into a unicast MAC.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetArgError> {
    let bad = || invalid(KEY_MAC, s, "not six hex pairs separated by colons");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    check_mac(mac)?;
    Ok(mac)
}

fn arg(key: &str, value: &str) -> String {
    format!("{ARG_PREFIX}{key}={value}")
}

fn check_mac(mac: [u8; 6]) -> Result<(), NetArgError> {
    if mac == [0; 6] {
        return Err(invalid(KEY_MAC, format_mac(mac), "the all-zero MAC"));
    }
    if mac[0] & 1 != 0 {
        return Err(invalid(KEY_MAC, format_mac(mac), "a multicast MAC"));
    }
    Ok(())
}

fn check_mtu(mtu: u32) -> Result<(), NetArgError> {
    if (MIN_MTU..=MAX_MTU).contains(&mtu) {
        Ok(())
    } else {
        Err(invalid(KEY_MTU, mtu, "out of range 68..=65535"))
    }
}

/// The longest prefix of `addr`'s family.
fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Parses `<ip>/<prefix>`.
fn parse_prefixed(key: &'static str, value: &str) -> Result<(IpAddr, u8), NetArgError> {
    let (ip, prefix) = value
        .split_once('/')
        .ok_or_else(|| invalid(key, value, "no /prefix"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| invalid(key, value, "not an IP address"))?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(key, value, "the prefix is not a number"));
    }
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| invalid(key, value, "the prefix is too long"))?;
    Ok((ip, prefix))
}

fn check_address(addr: IpAddr, prefix: u8) -> Result<(), NetArgError> {
    let shown = || format!("{addr}/{prefix}");
    if prefix > max_prefix(addr) {
        return Err(invalid(KEY_ADDR, shown(), "the prefix is too long"));
    }
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(invalid(
            KEY_ADDR,
            shown(),
            "not a unicast address (unspecified or multicast)",
        ));
    }
    Ok(())
}

/// `addr` with every bit beyond `prefix` cleared.
fn network_of(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

fn check_route(route: &GuestRoute) -> Result<(), NetArgError> {
    let shown = || {
        let mut s = format!("{}/{}", route.dst, route.prefix);
        if let Some(gw) = route.gateway {
            s.push('@');
            s.push_str(&gw.to_string());
        }
        s
    };
    if route.prefix > max_prefix(route.dst) {
        return Err(invalid(KEY_ROUTE, shown(), "the prefix is too long"));
    }
    if network_of(route.dst, route.prefix) != route.dst {
        return Err(invalid(
            KEY_ROUTE,
            shown(),
            "the destination has bits set beyond its prefix",
        ));
    }
    if let Some(gw) = route.gateway {
        if gw.is_ipv4() != route.dst.is_ipv4() {
            return Err(invalid(
                KEY_ROUTE,
                shown(),
                "the gateway's family differs from the destination's",
            ));
        }
        if gw.is_unspecified() || gw.is_multicast() {
            return Err(invalid(
                KEY_ROUTE,
                shown(),
                "the gateway is not a unicast address",
            ));
        }
    }
    Ok(())
}

fn check_nameserver(ns: IpAddr) -> Result<(), NetArgError> {
    if ns.is_unspecified() || ns.is_multicast() {
        return Err(invalid(KEY_DNS, ns, "not a unicast address"));
    }
    Ok(())
}

/// A search domain or resolver option: non-empty printable ASCII, no whitespace or commas.
fn check_word(key: &'static str, value: &str) -> Result<(), NetArgError> {
    if value.is_empty() {
        return Err(invalid(key, value, "empty"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(invalid(
            key,
            value,
            "not printable ASCII without whitespace or commas",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn full() -> GuestNetwork {
        GuestNetwork {
            mac: [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef],
            mtu: Some(1450),
            addresses: vec![(ip("10.22.0.5"), 24), (ip("fd00:22::5"), 64)],
            routes: vec![
                GuestRoute {
                    dst: ip("0.0.0.0"),
                    prefix: 0,
                    gateway: Some(ip("10.22.0.1")),
                },
                GuestRoute {
                    dst: ip("10.9.0.0"),
                    prefix: 16,
                    gateway: None,
                },
                GuestRoute {
                    dst: ip("::"),
                    prefix: 0,
                    gateway: Some(ip("fd00:22::1")),
                },
            ],
            dns: GuestDns {
                nameservers: vec![ip("10.22.0.1"), ip("fd00:22::1")],
                search: vec!["example.org".into(), "svc.cluster.local".into()],
                options: vec!["ndots:2".into(), "edns0".into()],
            },
        }
    }

    #[test]
    fn round_trips() {
        let net = full();
        let args = net.to_kernel_args().expect("valid");
        assert_eq!(
            args,
            [
                "spinbox.net.mac=52:54:00:ab:cd:ef",
                "spinbox.net.mtu=1450",
                "spinbox.net.addr=10.22.0.5/24",
                "spinbox.net.addr=fd00:22::5/64",
                "spinbox.net.route=0.0.0.0/0@10.22.0.1",
                "spinbox.net.route=10.9.0.0/16",
                "spinbox.net.route=::/0@fd00:22::1",
                "spinbox.net.dns=10.22.0.1",
                "spinbox.net.dns=fd00:22::1",
                "spinbox.net.search=example.org",
                "spinbox.net.search=svc.cluster.local",
                "spinbox.net.dnsopt=ndots:2",
                "spinbox.net.dnsopt=edns0",
            ]
        );
        let cmdline = format!(
            "console=hvc0 panic=-1 {}  spinbox.agent=mute\n",
            args.join(" ")
        );
        assert_eq!(GuestNetwork::from_cmdline(&cmdline), Ok(Some(net)));
        assert!(net_routes_default());

        // The minimum: a MAC alone.
        let bare = GuestNetwork {
            mac: [2, 0, 0, 0, 0, 1],
            ..GuestNetwork::default()
        };
        let args = bare.to_kernel_args().expect("valid");
        assert_eq!(args, ["spinbox.net.mac=02:00:00:00:00:01"]);
        assert_eq!(GuestNetwork::from_cmdline(&args.join(" ")), Ok(Some(bare)));
    }

    fn net_routes_default() -> bool {
        let net = full();
        net.routes[0].is_default() && !net.routes[1].is_default() && net.routes[2].is_default()
    }

    #[test]
    fn absent_means_none() {
        assert_eq!(GuestNetwork::from_cmdline(""), Ok(None));
        assert_eq!(
            GuestNetwork::from_cmdline("console=ttyS0 spinbox.agent=mute spinbox.netx=1"),
            Ok(None)
        );
    }

    #[test]
    fn upper_case_mac_is_accepted() {
        let net = GuestNetwork::from_cmdline("spinbox.net.mac=52:54:00:AB:cd:EF")
            .expect("valid")
            .expect("present");
        assert_eq!(net.mac, [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    }

    fn refused(cmdline: &str) -> NetArgError {
        match GuestNetwork::from_cmdline(cmdline) {
            Err(e) => {
                // Every refusal reads as a sentence naming the problem.
                assert!(!e.to_string().is_empty());
                e
            }
            Ok(v) => panic!("{cmdline:?} accepted as {v:?}"),
        }
    }

    #[test]
    fn cmdline_refusals() {
        const MAC: &str = "spinbox.net.mac=52:54:00:12:34:56";
        for bad_mac in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:567",
            "+5:54:00:12:34:56",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "",
        ] {
            let err = refused(&format!("spinbox.net.mac={bad_mac}"));
            assert!(
                matches!(err, NetArgError::Invalid { key: "mac", .. }),
                "{bad_mac}: {err:?}"
            );
        }
        for (arg, key) in [
            ("spinbox.net.mtu=67", "mtu"),
            ("spinbox.net.mtu=65536", "mtu"),
            ("spinbox.net.mtu=-1", "mtu"),
            ("spinbox.net.mtu=", "mtu"),
            ("spinbox.net.addr=10.0.0.1/33", "addr"),
            ("spinbox.net.addr=fd00::1/129", "addr"),
            ("spinbox.net.addr=10.0.0.1", "addr"),
            ("spinbox.net.addr=10.0.0.1/", "addr"),
            ("spinbox.net.addr=10.0.0.1/+8", "addr"),
            ("spinbox.net.addr=10.0.0.1/999", "addr"),
            ("spinbox.net.addr=10.0.0/8", "addr"),
            ("spinbox.net.addr=0.0.0.0/8", "addr"),
            ("spinbox.net.addr=224.0.0.1/8", "addr"),
            ("spinbox.net.route=10.9.0.1/16", "route"),
            ("spinbox.net.route=0.0.0.0/0@fd00::1", "route"),
            ("spinbox.net.route=0.0.0.0/0@", "route"),
            ("spinbox.net.route=0.0.0.0/0@0.0.0.0", "route"),
            ("spinbox.net.route=10.0.0.0/33", "route"),
            ("spinbox.net.route=default", "route"),
            ("spinbox.net.dns=example.org", "dns"),
            ("spinbox.net.dns=0.0.0.0", "dns"),
            ("spinbox.net.search=", "search"),
            ("spinbox.net.search=a,b", "search"),
            ("spinbox.net.search=caf\u{e9}.org", "search"),
            ("spinbox.net.dnsopt=", "dnsopt"),
            ("spinbox.net.dnsopt=a\u{7}b", "dnsopt"),
        ] {
            let err = refused(&format!("{MAC} {arg}"));
            assert!(
                matches!(&err, NetArgError::Invalid { key: k, .. } if *k == key),
                "{arg}: {err:?}"
            );
        }
        assert_eq!(
            refused("spinbox.net.addr=10.0.0.2/24"),
            NetArgError::MissingMac
        );
        assert_eq!(
            refused(&format!("{MAC} {MAC}")),
            NetArgError::Repeated("mac")
        );
        assert_eq!(
            refused(&format!("{MAC} spinbox.net.mtu=1500 spinbox.net.mtu=1400")),
            NetArgError::Repeated("mtu")
        );
        assert!(matches!(
            refused(&format!("{MAC} spinbox.net.gateway=10.0.0.1")),
            NetArgError::UnknownKey(_)
        ));
        assert!(matches!(
            refused(&format!("{MAC} spinbox.net.addr")),
            NetArgError::MissingValue(_)
        ));
        let long = format!("{MAC} spinbox.net.search={}", "a".repeat(MAX_ARG_LEN));
        assert!(matches!(refused(&long), NetArgError::TooLong(_)));
    }

    #[test]
    fn kernel_args_refusals() {
        let refused = |net: GuestNetwork| match net.to_kernel_args() {
            Err(e) => e,
            Ok(args) => panic!("{net:?} written as {args:?}"),
        };
        let with = |f: fn(&mut GuestNetwork)| {
            let mut net = full();
            f(&mut net);
            refused(net)
        };
        assert!(matches!(
            refused(GuestNetwork::default()),
            NetArgError::Invalid { key: "mac", .. }
        ));
        assert!(matches!(
            with(|n| n.mac = [1, 2, 3, 4, 5, 6]),
            NetArgError::Invalid { key: "mac", .. }
        ));
        assert!(matches!(
            with(|n| n.mtu = Some(10)),
            NetArgError::Invalid { key: "mtu", .. }
        ));
        assert!(matches!(
            with(|n| n.addresses.push((ip("10.0.0.1"), 33))),
            NetArgError::Invalid { key: "addr", .. }
        ));
        assert!(matches!(
            with(|n| n.routes[1].prefix = 129),
            NetArgError::Invalid { key: "route", .. }
        ));
        assert!(matches!(
            with(|n| n.routes[1].dst = ip("10.9.1.0")),
            NetArgError::Invalid { key: "route", .. }
        ));
        assert!(matches!(
            with(|n| n.routes[0].gateway = Some(ip("fd00::1"))),
            NetArgError::Invalid { key: "route", .. }
        ));
        assert!(matches!(
            with(|n| n.dns.search.push("has space.org".into())),
            NetArgError::Invalid { key: "search", .. }
        ));
        assert!(matches!(
            with(|n| n.dns.search.push("tab\t.org".into())),
            NetArgError::Invalid { key: "search", .. }
        ));
        assert!(matches!(
            with(|n| n.dns.options.push("a,b".into())),
            NetArgError::Invalid { key: "dnsopt", .. }
        ));
        assert!(matches!(
            with(|n| n.dns.search.push("a".repeat(MAX_ARG_LEN))),
            NetArgError::TooLong(_)
        ));
    }

    #[test]
    fn errors_read_as_sentences() {
        let err = GuestNetwork::from_cmdline(
            "spinbox.net.mac=52:54:00:12:34:56 spinbox.net.addr=10.0.0.1/33",
        )
        .expect_err("prefix 33");
        assert_eq!(
            err.to_string(),
            "invalid spinbox.net.addr value \"10.0.0.1/33\": the prefix is too long"
        );
        assert_eq!(
            NetArgError::MissingMac.to_string(),
            "network kernel arguments without spinbox.net.mac (which NIC?)"
        );
    }
}
