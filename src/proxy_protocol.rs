//! PROXY protocol version 2 header (haproxy's proxy-protocol.txt, section 2.2).
//!
//! Layout: 12-byte signature, one version|command byte (0x21 PROXY, 0x20
//! LOCAL), one family|transport byte (0x11 TCP/IPv4, 0x21 TCP/IPv6, 0x00
//! UNSPEC), a big-endian u16 length of what follows, then the addresses:
//! source address, destination address, source port, destination port.
//!
//! The writer never allocates: the data path encodes into a stack buffer and
//! writes it before the first client byte. The decoder exists for tests and
//! fuzzing and must never panic, whatever the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature, `\r\n\r\n\0\r\nQUIT\n`.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Fixed part: signature, version|command, family|transport, length.
pub const HEADER_LEN: usize = 16;
/// Longest header this writer emits: fixed part plus an IPv6 address block.
pub const MAX_V2_LEN: usize = HEADER_LEN + 36;

const VERSION_2: u8 = 0x20;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;
const UNSPEC: u8 = 0x00;
const IPV4_BLOCK: usize = 12;
const IPV6_BLOCK: usize = 36;
const UNIX_BLOCK: usize = 216;

/// The command of a v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Connection made by the proxy itself (health checks): use the real addresses.
    Local,
    /// Relayed connection: the header carries the original addresses.
    Proxy,
}

/// Why bytes are not a valid v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The input does not start with the v2 signature.
    BadSignature,
    /// The high nibble of byte 13 is not 2.
    BadVersion(u8),
    /// The low nibble of byte 13 is neither LOCAL nor PROXY.
    BadCommand(u8),
    /// Unknown address family or transport in byte 14.
    BadFamily(u8),
    /// The declared length is shorter than the family's address block.
    AddressBlockTooShort { family: u8, len: u16 },
}

impl std::fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadSignature => f.write_str("missing PROXY protocol v2 signature"),
            Self::BadVersion(v) => write!(f, "unsupported PROXY protocol version {v}"),
            Self::BadCommand(c) => write!(f, "unknown PROXY protocol v2 command {c:#x}"),
            Self::BadFamily(b) => write!(f, "unknown PROXY protocol v2 family/transport {b:#04x}"),
            Self::AddressBlockTooShort { family, len } => write!(
                f,
                "PROXY protocol v2 length {len} too short for family/transport {family:#04x}"
            ),
        }
    }
}

impl std::error::Error for ProxyHeaderError {}

/// Both addresses as IPv4 when each is IPv4 or v4-mapped IPv6, else None.
fn both_v4(src: IpAddr, dst: IpAddr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        }
    }
    Some((v4(src)?, v4(dst)?))
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Writes a v2 PROXY header for a TCP connection into `buf` and returns the
/// number of bytes written (28 for IPv4, 52 for IPv6). No allocation.
///
/// `src` is the client's address, `dst` the address it connected to. A
/// dual-stack listener sees IPv4 clients as v4-mapped IPv6; those are sent
/// as IPv4 when both sides are (mapped) IPv4, so the backend sees the same
/// form a v4-only listener would give it. Otherwise both go as IPv6, an IPv4
/// side as v4-mapped, because the header has one family for both addresses.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, buf: &mut [u8; MAX_V2_LEN]) -> usize {
    buf[..12].copy_from_slice(&SIGNATURE);
    buf[12] = VERSION_2 | CMD_PROXY;
    let block = match both_v4(src.ip(), dst.ip()) {
        Some((s, d)) => {
            buf[13] = TCP_OVER_IPV4;
            buf[16..20].copy_from_slice(&s.octets());
            buf[20..24].copy_from_slice(&d.octets());
            buf[24..26].copy_from_slice(&src.port().to_be_bytes());
            buf[26..28].copy_from_slice(&dst.port().to_be_bytes());
            IPV4_BLOCK
        }
        None => {
            buf[13] = TCP_OVER_IPV6;
            buf[16..32].copy_from_slice(&as_v6(src.ip()).octets());
            buf[32..48].copy_from_slice(&as_v6(dst.ip()).octets());
            buf[48..50].copy_from_slice(&src.port().to_be_bytes());
            buf[50..52].copy_from_slice(&dst.port().to_be_bytes());
            IPV6_BLOCK
        }
    };
    // Both blocks are far below u16::MAX; the cast cannot truncate.
    buf[14..16].copy_from_slice(&(block as u16).to_be_bytes());
    HEADER_LEN + block
}

/// The v2 LOCAL header sent on health-check connections: 16 bytes, UNSPEC
/// family, empty address block.
pub fn encode_v2_local() -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..12].copy_from_slice(&SIGNATURE);
    out[12] = VERSION_2 | CMD_LOCAL;
    out[13] = UNSPEC;
    out
}

/// Parsed addresses of a header: `(source, destination)`.
pub type Addresses = (SocketAddr, SocketAddr);

/// Parses a v2 header at the start of `bytes`.
///
/// Follows the codec convention: `Ok(None)` means the input is a valid prefix
/// that is too short (read more and retry), `Ok(Some((command, addresses,
/// consumed)))` a complete header of `consumed` bytes (TLVs after the address
/// block are skipped, as the spec allows), `Err` an invalid header. Addresses
/// are `None` for LOCAL, UNSPEC and AF_UNIX headers: the receiver then uses
/// the connection's real addresses. UDP (DGRAM) addresses are returned too.
pub fn decode_v2(
    bytes: &[u8],
) -> Result<Option<(Command, Option<Addresses>, usize)>, ProxyHeaderError> {
    let sig_len = bytes.len().min(SIGNATURE.len());
    if bytes.get(..sig_len) != SIGNATURE.get(..sig_len) {
        return Err(ProxyHeaderError::BadSignature);
    }
    let Some(fixed) = bytes.get(..HEADER_LEN) else {
        // Check what we can of byte 13 early so garbage fails fast.
        if let Some(&vc) = bytes.get(12) {
            if vc & 0xF0 != VERSION_2 {
                return Err(ProxyHeaderError::BadVersion(vc >> 4));
            }
        }
        return Ok(None);
    };
    let vc = fixed[12];
    if vc & 0xF0 != VERSION_2 {
        return Err(ProxyHeaderError::BadVersion(vc >> 4));
    }
    let command = match vc & 0x0F {
        CMD_LOCAL => Command::Local,
        CMD_PROXY => Command::Proxy,
        other => return Err(ProxyHeaderError::BadCommand(other)),
    };
    let family = fixed[13];
    let len = u16::from_be_bytes([fixed[14], fixed[15]]);
    // Minimum address block by family (high nibble) and transport (low nibble).
    let needed = match (family >> 4, family & 0x0F) {
        (0x0, 0x0) => 0,
        (0x1, 0x1 | 0x2) => IPV4_BLOCK,
        (0x2, 0x1 | 0x2) => IPV6_BLOCK,
        (0x3, 0x1 | 0x2) => UNIX_BLOCK,
        _ => return Err(ProxyHeaderError::BadFamily(family)),
    };
    if usize::from(len) < needed {
        return Err(ProxyHeaderError::AddressBlockTooShort { family, len });
    }
    let total = HEADER_LEN + usize::from(len);
    let Some(block) = bytes.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    if command == Command::Local {
        return Ok(Some((command, None, total)));
    }
    let addrs = match needed {
        IPV4_BLOCK => {
            let ip = |o: usize| IpAddr::from([block[o], block[o + 1], block[o + 2], block[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        IPV6_BLOCK => {
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&block[o..o + 16]);
                IpAddr::from(a)
            };
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        _ => None,
    };
    Ok(Some((command, addrs, total)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn encode(src: &str, dst: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_V2_LEN];
        let n = encode_v2(sa(src), sa(dst), &mut buf);
        buf[..n].to_vec()
    }

    const SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

    // Written by hand from the section 2.2 layout.
    #[rustfmt::skip]
    const IPV4_EXAMPLE: [u8; 28] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
        0x21,             // v2, PROXY
        0x11,             // TCP over IPv4
        0x00, 0x0C,       // 12 address bytes
        192, 0, 2, 10,    // src 192.0.2.10
        198, 51, 100, 5,  // dst 198.51.100.5
        0xC8, 0x22,       // src port 51234
        0x01, 0xBB,       // dst port 443
    ];

    #[rustfmt::skip]
    const IPV6_EXAMPLE: [u8; 52] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
        0x21,             // v2, PROXY
        0x21,             // TCP over IPv6
        0x00, 0x24,       // 36 address bytes
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, // 2001:db8::1
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xFF, // 2001:db8::ff
        0x9C, 0x40,       // src port 40000
        0x1F, 0x90,       // dst port 8080
    ];

    #[test]
    fn signature_matches_spec_text() {
        assert_eq!(SIGNATURE, SIG);
    }

    #[test]
    fn ipv4_bytes_exact() {
        assert_eq!(encode("192.0.2.10:51234", "198.51.100.5:443"), IPV4_EXAMPLE);
    }

    #[test]
    fn ipv6_bytes_exact() {
        assert_eq!(
            encode("[2001:db8::1]:40000", "[2001:db8::ff]:8080"),
            IPV6_EXAMPLE
        );
    }

    #[test]
    fn local_bytes_exact() {
        let mut expected = SIG.to_vec();
        expected.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(encode_v2_local().to_vec(), expected);
        let decoded = decode_v2(&encode_v2_local()).unwrap();
        assert_eq!(decoded, Some((Command::Local, None, 16)));
    }

    #[test]
    fn v4_mapped_both_sides_becomes_ipv4() {
        let got = encode("[::ffff:192.0.2.10]:51234", "[::ffff:198.51.100.5]:443");
        assert_eq!(got, IPV4_EXAMPLE);
        // One plain v4 and one mapped v4 is still IPv4.
        let got = encode("192.0.2.10:51234", "[::ffff:198.51.100.5]:443");
        assert_eq!(got, IPV4_EXAMPLE);
    }

    #[test]
    fn mixed_family_becomes_ipv6_with_mapped_v4() {
        let got = encode("192.0.2.10:51234", "[2001:db8::ff]:8080");
        assert_eq!(got.len(), 52);
        assert_eq!(&got[13..16], &[0x21, 0x00, 0x24]);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xFF;
        mapped[11] = 0xFF;
        mapped[12..].copy_from_slice(&[192, 0, 2, 10]);
        assert_eq!(&got[16..32], &mapped);
        assert_eq!(&got[32..48], &IPV6_EXAMPLE[32..48]);
    }

    #[test]
    fn round_trip() {
        for (src, dst) in [
            ("192.0.2.10:51234", "198.51.100.5:443"),
            ("0.0.0.0:0", "255.255.255.255:65535"),
            ("[2001:db8::1]:40000", "[2001:db8::ff]:8080"),
            ("[::1]:1", "[fe80::1]:2"),
        ] {
            let bytes = encode(src, dst);
            let got = decode_v2(&bytes).unwrap();
            assert_eq!(
                got,
                Some((Command::Proxy, Some((sa(src), sa(dst))), bytes.len()))
            );
        }
    }

    #[test]
    fn decode_skips_tlvs_and_ignores_trailing_payload() {
        let mut bytes = IPV4_EXAMPLE.to_vec();
        bytes[15] = 12 + 4; // address block plus a 4-byte TLV
        bytes.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // PP2_TYPE_NOOP
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (cmd, addrs, used) = decode_v2(&bytes).unwrap().unwrap();
        assert_eq!(cmd, Command::Proxy);
        assert_eq!(used, 32);
        assert_eq!(
            addrs,
            Some((sa("192.0.2.10:51234"), sa("198.51.100.5:443")))
        );
    }

    #[test]
    fn truncated_prefixes_are_incomplete_never_success() {
        for example in [&IPV4_EXAMPLE[..], &IPV6_EXAMPLE[..]] {
            for n in 0..example.len() {
                assert_eq!(decode_v2(&example[..n]), Ok(None), "prefix {n}");
            }
        }
    }

    #[test]
    fn invalid_headers_are_errors() {
        let bad = |i: usize, v: u8| {
            let mut b = IPV4_EXAMPLE;
            b[i] = v;
            decode_v2(&b)
        };
        assert_eq!(bad(0, b'G'), Err(ProxyHeaderError::BadSignature));
        assert_eq!(bad(12, 0x11), Err(ProxyHeaderError::BadVersion(1)));
        assert_eq!(bad(12, 0x22), Err(ProxyHeaderError::BadCommand(2)));
        assert_eq!(bad(13, 0x41), Err(ProxyHeaderError::BadFamily(0x41)));
        assert_eq!(
            bad(15, 4),
            Err(ProxyHeaderError::AddressBlockTooShort {
                family: 0x11,
                len: 4
            })
        );
        assert_eq!(
            decode_v2(b"PROXY TCP4 "),
            Err(ProxyHeaderError::BadSignature)
        );
        assert!(!ProxyHeaderError::BadSignature.to_string().is_empty());
    }

    #[test]
    fn random_inputs_never_panic() {
        // Simple LCG (Numerical Recipes constants): deterministic, no rand dep.
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let mut buf = [0u8; 320];
        let mut complete = 0;
        for round in 0..100_000 {
            let len = usize::from(next()) + usize::from(next() & 0x3F);
            for b in buf.iter_mut().take(len) {
                *b = next();
            }
            // Most rounds start with a valid signature and version so the
            // decoder gets past the first checks and exercises the rest.
            if round % 4 != 0 && len >= 16 {
                buf[..12].copy_from_slice(&SIGNATURE);
                buf[12] = 0x20 | (next() & 0x03);
                buf[13] =
                    [0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, next()][usize::from(next() & 7)];
                buf[14] = 0;
                buf[15] = next() % 250;
            }
            if let Ok(Some((_, _, used))) = decode_v2(&buf[..len]) {
                assert!(used <= len);
                complete += 1;
            }
        }
        assert!(
            complete > 1000,
            "fuzz loop reached too few complete headers: {complete}"
        );
    }
}
