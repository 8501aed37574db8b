//! The TAP device QEMU gets by file descriptor, wired to the CNI interface.
//!
//! Inside the task's network namespace, [`attach`] creates a TAP device beside the
//! interface the CNI plugins made (a veth end, usually `eth0`) and joins the two with tc
//! (kata-containers' "tcfilter" mode): an `ingress` qdisc on each, and on each a u32
//! match-all filter whose `mirred` action redirects every frame to the other's egress.
//! Frames the guest writes to the TAP leave through the veth, frames arriving on the veth
//! reach the guest. The guest's NIC takes the veth's MAC address, so the addresses the CNI
//! plugins set up for the veth (and any MAC-based filtering on the host side) still hold.
//!
//! All netlink work runs on a thread inside the namespace (see [`netns::run_in`]) with its
//! own small tokio runtime, as a netlink socket belongs to the namespace it is created in.

use std::fmt;
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

use super::netns;

/// `ETH_P_ALL`: every protocol, for the filters' match.
const ETH_P_ALL: u16 = 0x0003;
/// The handle of the `ingress` qdisc, and the parent of the filters attached to it.
const INGRESS_PARENT: u32 = 0xffff_0000;
/// The longest interface name (`IFNAMSIZ` less the terminating NUL).
const MAX_IFNAME: usize = 15;

/// A TAP device created by [`attach`], wired to a CNI interface.
pub struct TapDevice {
    /// The TAP's queue file descriptor (from `/dev/net/tun`, no `IFF_VNET_HDR`, no packet
    /// information header: plain Ethernet frames). It is close-on-exec: pass it to QEMU
    /// with an explicit inheritance step (e.g. `dup2` in `pre_exec`) and
    /// `-netdev tap,fd=N`. The TAP is not persistent: it disappears when the last
    /// descriptor on it closes.
    pub fd: OwnedFd,
    /// The TAP's interface name inside the namespace.
    pub name: String,
    /// The MAC address of the CNI interface, for the guest's NIC.
    pub mac: [u8; 6],
    /// The MTU of the CNI interface, also set on the TAP; the guest should use it.
    pub mtu: u32,
}

impl fmt::Debug for TapDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapDevice")
            .field("fd", &self.fd.as_raw_fd())
            .field("name", &self.name)
            .field("mac", &format_mac(&self.mac))
            .field("mtu", &self.mtu)
            .finish()
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a TAP operation failed, naming the step and the interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// An interface name the kernel would refuse.
    #[error("invalid interface name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The network namespace could not be entered (missing, not a namespace).
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace's path.
        path: PathBuf,
        /// The error opening or entering it.
        #[source]
        source: io::Error,
    },
    /// The interface to wire the TAP to does not exist in the namespace.
    #[error("interface {ifname:?} does not exist in the network namespace")]
    Missing {
        /// The interface's name.
        ifname: String,
    },
    /// A link already has the TAP's name.
    #[error("interface {ifname:?} already exists in the network namespace")]
    Exists {
        /// The name taken.
        ifname: String,
    },
    /// The interface to wire the TAP to is unusable (e.g. not Ethernet: no 6-byte MAC).
    #[error("interface {ifname:?} cannot be used: {why}")]
    BadLink {
        /// The interface's name.
        ifname: String,
        /// Why.
        why: String,
    },
    /// Opening `/dev/net/tun` or creating the TAP (`TUNSETIFF`) failed.
    #[error("creating TAP device {tap:?}: {source}")]
    Tun {
        /// The TAP's name.
        tap: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {step} on {ifname:?}: {source}")]
    Netlink {
        /// The step (e.g. "add ingress qdisc").
        step: &'static str,
        /// The interface the step was about.
        ifname: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink connection or its runtime could not be set up in the namespace.
    #[error("setting up netlink in the namespace: {source}")]
    Setup {
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Checks a name as the kernel's `dev_valid_name` does.
fn check_name(name: &str) -> Result<(), TapError> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains `/`, `:`, NUL or whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(TapError::InvalidName {
            name: name.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// Runs `f` with a netlink handle inside the namespace at `path`, on a new thread with its
/// own current-thread runtime.
fn with_netlink<T, F, Fut>(path: &Path, f: F) -> Result<T, TapError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, TapError>>,
{
    let ran = netns::run_in(path, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| TapError::Setup { source })?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| TapError::Setup { source })?;
            let conn = tokio::spawn(conn);
            let out = f(handle).await;
            conn.abort();
            out
        })
    });
    ran.map_err(|source| TapError::Netns {
        path: path.to_path_buf(),
        source,
    })?
}

/// Whether a netlink error is the kernel's `errno`.
fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}

/// The link named `name`, if any.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, TapError> {
    let got = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match got {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(source) => Err(TapError::Netlink {
            step: "get link",
            ifname: name.to_owned(),
            source,
        }),
    }
}

/// Maps a netlink error to [`TapError::Netlink`].
fn nl(step: &'static str, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> TapError {
    let ifname = ifname.to_owned();
    move |source| TapError::Netlink {
        step,
        ifname,
        source,
    }
}

/// Opens `/dev/net/tun` and creates (attaches to) the TAP `name`.
fn open_tap(name: &str) -> Result<OwnedFd, TapError> {
    let tun_err = |source| TapError::Tun {
        tap: name.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(tun_err)?;
    // SAFETY: `ifreq` is plain data (a name and a union of integers); all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    // The flags fit a c_short (IFF_TAP 0x0002 | IFF_NO_PI 0x1000).
    #[allow(clippy::cast_possible_truncation)]
    {
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    }
    // SAFETY: TUNSETIFF reads (and writes back) one `ifreq`, which `req` is, and the fd is
    // an open `/dev/net/tun`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    if rc < 0 {
        return Err(tun_err(io::Error::last_os_error()));
    }
    Ok(file.into())
}

/// The index, MAC and MTU of a link.
fn link_facts(link: &LinkMessage, ifname: &str) -> Result<(u32, [u8; 6], u32), TapError> {
    let mut mac = None;
    let mut mtu = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    let bad = |why: &str| TapError::BadLink {
        ifname: ifname.to_owned(),
        why: why.to_owned(),
    };
    Ok((
        link.header.index,
        mac.ok_or_else(|| bad("no Ethernet (6-byte) MAC address"))?,
        mtu.ok_or_else(|| bad("no MTU"))?,
    ))
}

/// The index as the tc requests take it.
fn tc_index(index: u32, ifname: &str) -> Result<i32, TapError> {
    i32::try_from(index).map_err(|_| TapError::BadLink {
        ifname: ifname.to_owned(),
        why: format!("interface index {index} out of range"),
    })
}

/// Adds an `ingress` qdisc on `index`.
async fn add_ingress(handle: &Handle, index: u32, ifname: &str) -> Result<(), TapError> {
    handle
        .qdisc()
        .add(tc_index(index, ifname)?)
        .ingress()
        .execute()
        .await
        .map_err(nl("add ingress qdisc", ifname))
}

/// Adds, under `index`'s `ingress` qdisc, a match-all filter redirecting to `to`'s egress.
async fn add_redirect(handle: &Handle, index: u32, ifname: &str, to: u32) -> Result<(), TapError> {
    handle
        .traffic_filter(tc_index(index, ifname)?)
        .add()
        .parent(INGRESS_PARENT)
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)
        .map_err(nl("build redirect filter", ifname))?
        .execute()
        .await
        .map_err(nl("add redirect filter", ifname))
}

/// Deletes the `ingress` qdisc of `index` (and so its filters); best effort.
async fn del_ingress(handle: &Handle, index: u32) {
    let Ok(idx) = i32::try_from(index) else {
        return;
    };
    let mut req = handle.qdisc().del(idx);
    req.message_mut().header.parent = TcHandle::INGRESS;
    req.message_mut().header.handle = TcHandle::from(INGRESS_PARENT);
    let _ = req.execute().await;
}

/// The wiring steps of [`attach`] once the TAP exists; `veth_qdisc` records whether the
/// veth's qdisc was added (for the cleanup).
async fn wire(
    handle: &Handle,
    veth: (u32, &str),
    tap: (u32, &str),
    mtu: u32,
    veth_qdisc: &mut bool,
) -> Result<(), TapError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap.0).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(nl("set MTU and up", tap.1))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(veth.0).up().build())
        .execute()
        .await
        .map_err(nl("set up", veth.1))?;
    add_ingress(handle, tap.0, tap.1).await?;
    add_redirect(handle, tap.0, tap.1, veth.0).await?;
    add_ingress(handle, veth.0, veth.1).await?;
    *veth_qdisc = true;
    add_redirect(handle, veth.0, veth.1, tap.0).await
}

/// Creates the TAP `tap_name` in the network namespace at `netns` and wires it to the
/// interface `ifname` (the CNI-made veth end) with tc redirect filters both ways.
///
/// Reads `ifname`'s MAC and MTU, creates the TAP (`IFF_TAP | IFF_NO_PI`, no vnet header),
/// sets its MTU to `ifname`'s, brings both up, and adds an `ingress` qdisc and a u32
/// match-all `mirred` egress-redirect filter on each toward the other. Fails if `tap_name`
/// already exists. On failure, what was made is removed: the TAP, and the `ingress` qdisc
/// added to `ifname`.
pub fn attach(netns: &Path, ifname: &str, tap_name: &str) -> Result<TapDevice, TapError> {
    check_name(ifname)?;
    check_name(tap_name)?;
    let (ifname, tap_name) = (ifname.to_owned(), tap_name.to_owned());
    with_netlink(netns, move |handle| async move {
        let veth = find_link(&handle, &ifname)
            .await?
            .ok_or_else(|| TapError::Missing {
                ifname: ifname.clone(),
            })?;
        let (veth_index, mac, mtu) = link_facts(&veth, &ifname)?;
        if find_link(&handle, &tap_name).await?.is_some() {
            return Err(TapError::Exists { ifname: tap_name });
        }
        let fd = open_tap(&tap_name)?;
        let mut veth_qdisc = false;
        let mut tap_index = None;
        let wired = async {
            let tap = find_link(&handle, &tap_name)
                .await?
                .ok_or_else(|| TapError::Missing {
                    ifname: tap_name.clone(),
                })?;
            tap_index = Some(tap.header.index);
            wire(
                &handle,
                (veth_index, &ifname),
                (tap.header.index, &tap_name),
                mtu,
                &mut veth_qdisc,
            )
            .await
        }
        .await;
        match wired {
            Ok(()) => Ok(TapDevice {
                fd,
                name: tap_name,
                mac,
                mtu,
            }),
            Err(e) => {
                if veth_qdisc {
                    del_ingress(&handle, veth_index).await;
                }
                drop(fd);
                if let Some(index) = tap_index {
                    let _ = handle.link().del(index).execute().await;
                }
                Err(e)
            }
        }
    })
}

/// Deletes the TAP `tap_name` in the namespace at `netns`, with its qdiscs and filters.
///
/// Idempotent: a missing namespace (or a path that is no namespace any more) and a missing
/// link are `Ok`. A non-persistent TAP disappears by itself when its last descriptor
/// closes; this is for a descriptor that leaked elsewhere.
pub fn remove(netns: &Path, tap_name: &str) -> Result<(), TapError> {
    check_name(tap_name)?;
    if !netns::is_netns(netns) {
        return Ok(());
    }
    let tap_name = tap_name.to_owned();
    with_netlink(netns, move |handle| async move {
        let Some(link) = find_link(&handle, &tap_name).await? else {
            return Ok(());
        };
        match handle.link().del(link.header.index).execute().await {
            Err(e) if !is_errno(&e, libc::ENODEV) => Err(nl("delete link", &tap_name)(e)),
            _ => Ok(()),
        }
    })
}

/// Runs a blocking TAP operation off the async executor.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, TapError> + Send + 'static,
) -> Result<T, TapError> {
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(TapError::Setup {
            source: io::Error::other(e),
        }),
    }
}

/// [`attach`] for async callers (on tokio's blocking pool).
pub async fn attach_async(
    netns: PathBuf,
    ifname: String,
    tap_name: String,
) -> Result<TapDevice, TapError> {
    blocking(move || attach(&netns, &ifname, &tap_name)).await
}

/// [`remove`] for async callers (on tokio's blocking pool).
pub async fn remove_async(netns: PathBuf, tap_name: String) -> Result<(), TapError> {
    blocking(move || remove(&netns, &tap_name)).await
}

/// Whether a link named `name` exists in the namespace at `netns`.
pub fn link_exists(netns: &Path, name: &str) -> Result<bool, TapError> {
    check_name(name)?;
    let name = name.to_owned();
    with_netlink(netns, move |handle| async move {
        Ok(find_link(&handle, &name).await?.is_some())
    })
}

/// The link index of `name` in the namespace at `netns`, and the interface indices its
/// ingress redirect filters (the ones [`attach`] adds) send frames to; for checks and tests.
pub fn redirect_targets(netns: &Path, name: &str) -> Result<(u32, Vec<u32>), TapError> {
    use rtnetlink::packet_route::tc::{
        TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
        TcOption,
    };
    check_name(name)?;
    let name = name.to_owned();
    with_netlink(netns, move |handle| async move {
        let link = find_link(&handle, &name)
            .await?
            .ok_or_else(|| TapError::Missing {
                ifname: name.clone(),
            })?;
        let index = link.header.index;
        let idx = tc_index(index, &name)?;
        let filters: Vec<_> = handle
            .traffic_filter(idx)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(nl("get filters", &name))?;
        let mut targets = Vec::new();
        for msg in &filters {
            for attr in &msg.attributes {
                let TcAttribute::Options(opts) = attr else {
                    continue;
                };
                for opt in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
                        continue;
                    };
                    for action in actions {
                        for a in &action.attributes {
                            let TcActionAttribute::Options(aopts) = a else {
                                continue;
                            };
                            for o in aopts {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                                    targets.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((index, targets))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::net::netns::tests::{privileged, NsGuard};

    /// Creates a veth pair `a`/`b` in the namespace at `path`, both up.
    pub(crate) fn make_veth(path: &Path, a: &str, b: &str) {
        let (a, b) = (a.to_owned(), b.to_owned());
        with_netlink(path, move |handle| async move {
            handle
                .link()
                .add(rtnetlink::LinkVeth::new(&a, &b).up().build())
                .execute()
                .await
                .map_err(nl("add veth", &a))
        })
        .unwrap();
    }

    #[tokio::test]
    async fn async_variants() {
        if !privileged() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = NsGuard::new(dir.path().join("ns"));
        make_veth(&ns.0, "eth0", "peer0");
        let tap = attach_async(ns.0.clone(), "eth0".into(), "tap0".into())
            .await
            .unwrap();
        assert!(link_exists(&ns.0, "tap0").unwrap());
        // Removing the link while the descriptor is open.
        remove_async(ns.0.clone(), "tap0".into()).await.unwrap();
        assert!(!link_exists(&ns.0, "tap0").unwrap());
        drop(tap);
        remove_async(ns.0.clone(), "tap0".into()).await.unwrap();
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "a b", "1234567890123456", ".", "..", "a:b"] {
            assert!(
                matches!(check_name(bad), Err(TapError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        check_name("tap0").unwrap();
        check_name("123456789012345").unwrap();
    }

    #[test]
    fn attach_wires_and_cleans_up() {
        if !privileged() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = NsGuard::new(dir.path().join("ns"));
        make_veth(&ns.0, "eth0", "peer0");
        let tap = attach(&ns.0, "eth0", "tap0").unwrap();
        assert_eq!(tap.name, "tap0");
        assert_eq!(tap.mtu, 1500);
        assert!(link_exists(&ns.0, "tap0").unwrap());
        let (veth_index, to_tap) = redirect_targets(&ns.0, "eth0").unwrap();
        let (tap_index, to_veth) = redirect_targets(&ns.0, "tap0").unwrap();
        assert_eq!(to_tap, vec![tap_index]);
        assert_eq!(to_veth, vec![veth_index]);
        // The MAC is the veth's.
        let mac = with_netlink(&ns.0, |handle| async move {
            let link = find_link(&handle, "eth0").await?.unwrap();
            Ok(link_facts(&link, "eth0")?.1)
        })
        .unwrap();
        assert_eq!(tap.mac, mac);
        assert!(format!("{tap:?}").contains(&format_mac(&mac)));
        // A second TAP of the same name is refused, the first is untouched.
        assert!(matches!(
            attach(&ns.0, "eth0", "tap0"),
            Err(TapError::Exists { .. })
        ));
        assert!(link_exists(&ns.0, "tap0").unwrap());
        // Closing the descriptor removes the TAP.
        drop(tap);
        assert!(!link_exists(&ns.0, "tap0").unwrap());
        // The veth keeps its filter until its qdisc goes; remove is idempotent.
        remove(&ns.0, "tap0").unwrap();
        remove(&ns.0, "tap0").unwrap();
    }

    #[test]
    fn attach_failures_leave_nothing() {
        if !privileged() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = NsGuard::new(dir.path().join("ns"));
        assert!(matches!(
            attach(&ns.0, "eth0", "tap0"),
            Err(TapError::Missing { ifname }) if ifname == "eth0"
        ));
        assert!(!link_exists(&ns.0, "tap0").unwrap());
        assert!(matches!(
            attach(&ns.0, "eth0", "bad/name"),
            Err(TapError::InvalidName { .. })
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            attach(&missing, "eth0", "tap0"),
            Err(TapError::Netns { .. })
        ));
        remove(&missing, "tap0").unwrap();
        assert!(link_exists(&missing, "tap0").is_err());
        // A veth already holding an ingress qdisc: the TAP is made, then wiring fails on
        // the veth; the TAP is gone afterwards.
        make_veth(&ns.0, "eth0", "peer0");
        let first = attach(&ns.0, "eth0", "tap0").unwrap();
        let err = attach(&ns.0, "eth0", "tap1").unwrap_err();
        assert!(
            matches!(&err, TapError::Netlink { step: "add ingress qdisc", ifname, .. } if ifname == "eth0"),
            "{err}"
        );
        assert!(!link_exists(&ns.0, "tap1").unwrap());
        // The first wiring is intact.
        let (tap_index, _) = redirect_targets(&ns.0, "tap0").unwrap();
        assert_eq!(redirect_targets(&ns.0, "eth0").unwrap().1, vec![tap_index]);
        drop(first);
    }
}
