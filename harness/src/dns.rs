//! A small authoritative DNS responder on loopback, so that Envoy's c-ares resolver (a cluster's
//! `dns_resolution_config` / `typed_dns_resolver_config` with `resolvers: [127.0.0.1:<port>]`) resolves
//! test names such as `a.partner.example` to 127.0.0.1.
//!
//! UDP only, A records only, one question per query. The wire format is written by hand (RFC 1035 §4):
//! the question is echoed byte for byte (so a resolver's 0x20 case randomisation still matches), and the
//! answer names it with a compression pointer to offset 12 (`0xc00c`), TTL 5 s. A packet that is not a
//! well-formed query (short, a response, a compressed or overlong question name) is dropped unanswered.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// TTL of the answers, in seconds.
const TTL: u32 = 5;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_NOERROR: u16 = 0;
const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const HEADER_LEN: usize = 12;
/// The longest name on the wire, length bytes and the final zero included (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 255;

/// A DNS server on 127.0.0.1 (UDP, and TCP on the same port is NOT needed), answering A queries from a table.
pub struct DnsServer {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts on an ephemeral UDP port of 127.0.0.1, answering `records` (name -> IPv4; names compared
    /// case-insensitively, without a trailing dot). Any other name: NXDOMAIN. AAAA (or any other type) for a
    /// known name: NOERROR with no answers (NODATA), so a resolver asking AAAA first still falls back to A.
    pub fn start(records: &[(&str, Ipv4Addr)]) -> io::Result<DnsServer> {
        let table = records
            .iter()
            .map(|(name, ip)| Ok((wire_name(name)?, *ip)))
            .collect::<io::Result<HashMap<Vec<u8>, Ipv4Addr>>>()?;
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name(format!("dns-{}", addr.port())).spawn({
            let (queries, stop) = (queries.clone(), stop.clone());
            move || serve(&socket, &table, &queries, &stop)
        })?;
        Ok(DnsServer { addr, queries, stop, thread: Some(thread) })
    }

    /// The address to give Envoy's `resolvers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many queries it has answered so far (all types).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `name` in wire form (length-prefixed labels and a final zero), lower-cased: the table's key.
fn wire_name(name: &str) -> io::Result<Vec<u8>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, format!("dns: not a domain name: {name:?}"));
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    // split("") yields one empty label: the root name is refused with the other empty labels.
    for label in trimmed.split('.') {
        let len = u8::try_from(label.len()).ok().filter(|l| (1..=63).contains(l)).ok_or_else(invalid)?;
        wire.push(len);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > MAX_NAME_LEN {
        return Err(invalid());
    }
    Ok(wire)
}

fn serve(socket: &UdpSocket, table: &HashMap<Vec<u8>, Ipv4Addr>, queries: &AtomicUsize, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(_) => {
                // Not expected on loopback; don't spin if it persists.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(response) = buf.get(..len).and_then(|packet| respond(packet, table)) else { continue };
        queries.fetch_add(1, Ordering::SeqCst);
        let _ = socket.send_to(&response, peer);
    }
}

fn be16(packet: &[u8], at: usize) -> Option<u16> {
    match packet.get(at..at.checked_add(2)?)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// The response to `packet`, or `None` to drop it (not a well-formed query).
fn respond(packet: &[u8], table: &HashMap<Vec<u8>, Ipv4Addr>) -> Option<Vec<u8>> {
    let id = be16(packet, 0)?;
    let flags = be16(packet, 2)?;
    let qdcount = be16(packet, 4)?;
    if flags & 0x8000 != 0 {
        return None; // a response: never answer one
    }
    // QR, the request's opcode and RD, AA; RA stays 0 (no recursion here).
    let response_flags = 0x8000 | (flags & 0x7900) | 0x0400;
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 || qdcount != 1 {
        let rcode = if opcode != 0 { RCODE_NOTIMP } else { RCODE_FORMERR };
        return Some(header(id, response_flags | rcode, 0, 0));
    }
    // The question: uncompressed labels, then QTYPE and QCLASS.
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len > 63 {
            return None; // a compression pointer (or a reserved label type) in the question
        }
        at += 1 + len;
        if at - HEADER_LEN > MAX_NAME_LEN {
            return None;
        }
        if len == 0 {
            break;
        }
    }
    let qname = packet.get(HEADER_LEN..at)?;
    let qtype = be16(packet, at)?;
    let qclass = be16(packet, at + 2)?;
    let question = packet.get(HEADER_LEN..at + 4)?;
    let (rcode, answer) = match table.get(&qname.to_ascii_lowercase()) {
        None => (RCODE_NXDOMAIN, None),
        Some(ip) if qtype == TYPE_A && qclass == CLASS_IN => (RCODE_NOERROR, Some(ip)),
        Some(_) => (RCODE_NOERROR, None),
    };
    let mut response = header(id, response_flags | rcode, 1, u16::from(answer.is_some()));
    response.extend_from_slice(question);
    if let Some(ip) = answer {
        response.extend_from_slice(&[0xc0, 0x0c]); // the name: a pointer to the question's
        response.extend_from_slice(&TYPE_A.to_be_bytes());
        response.extend_from_slice(&CLASS_IN.to_be_bytes());
        response.extend_from_slice(&TTL.to_be_bytes());
        response.extend_from_slice(&4u16.to_be_bytes());
        response.extend_from_slice(&ip.octets());
    }
    Some(response)
}

fn header(id: u16, flags: u16, qdcount: u16, ancount: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN + MAX_NAME_LEN + 4 + 16);
    for field in [id, flags, qdcount, ancount, 0, 0] {
        h.extend_from_slice(&field.to_be_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE_AAAA: u16 = 28;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        // RD set, as a stub resolver sends it.
        let mut q = vec![(id >> 8) as u8, id as u8, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn client() -> UdpSocket {
        let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c
    }

    fn ask(server: &DnsServer, packet: &[u8]) -> Vec<u8> {
        let c = client();
        c.send_to(packet, server.addr()).unwrap();
        let mut buf = [0u8; 1500];
        let (len, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, server.addr());
        buf[..len].to_vec()
    }

    struct Parsed {
        id: u16,
        flags: u16,
        qdcount: u16,
        ancount: u16,
        /// The answers' (type, ttl, rdata), the name having to be the pointer 0xc00c.
        answers: Vec<(u16, u32, Vec<u8>)>,
    }

    fn parse(r: &[u8], question: &[u8]) -> Parsed {
        let p = Parsed {
            id: be16(r, 0).unwrap(),
            flags: be16(r, 2).unwrap(),
            qdcount: be16(r, 4).unwrap(),
            ancount: be16(r, 6).unwrap(),
            answers: Vec::new(),
        };
        assert_eq!((be16(r, 8), be16(r, 10)), (Some(0), Some(0)));
        let mut at = HEADER_LEN;
        if p.qdcount == 1 {
            assert_eq!(&r[at..at + question.len()], question, "question echoed verbatim");
            at += question.len();
        }
        let mut answers = Vec::new();
        for _ in 0..p.ancount {
            assert_eq!(&r[at..at + 2], &[0xc0, 0x0c]);
            let rtype = be16(r, at + 2).unwrap();
            assert_eq!(be16(r, at + 4), Some(CLASS_IN));
            let ttl = u32::from_be_bytes(r[at + 6..at + 10].try_into().unwrap());
            let rdlen = usize::from(be16(r, at + 10).unwrap());
            answers.push((rtype, ttl, r[at + 12..at + 12 + rdlen].to_vec()));
            at += 12 + rdlen;
        }
        assert_eq!(at, r.len(), "no trailing bytes");
        Parsed { answers, ..p }
    }

    fn rcode(p: &Parsed) -> u16 {
        p.flags & 0xf
    }

    fn server() -> DnsServer {
        DnsServer::start(&[
            ("a.partner.example", Ipv4Addr::LOCALHOST),
            ("B.Other.Example.", Ipv4Addr::new(127, 0, 0, 2)),
        ])
        .unwrap()
    }

    #[test]
    fn dns_known_name_a_record() {
        let s = server();
        assert_eq!(s.addr().ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(s.queries(), 0);
        let q = query(0x1234, "a.partner.example", TYPE_A);
        let p = parse(&ask(&s, &q), &q[HEADER_LEN..]);
        assert_eq!(p.id, 0x1234);
        assert_eq!(p.flags, 0x8000 | 0x0400 | 0x0100, "QR, AA, RD echoed, NOERROR");
        assert_eq!((p.qdcount, p.ancount), (1, 1));
        assert_eq!(p.answers, vec![(TYPE_A, 5, vec![127, 0, 0, 1])]);
        assert_eq!(s.queries(), 1);
    }

    #[test]
    fn dns_unknown_name_nxdomain() {
        let s = server();
        for name in ["nope.example", "partner.example", "x.a.partner.example"] {
            let q = query(7, name, TYPE_A);
            let p = parse(&ask(&s, &q), &q[HEADER_LEN..]);
            assert_eq!(rcode(&p), 3, "{name}");
            assert_eq!((p.qdcount, p.ancount), (1, 0));
        }
        assert_eq!(s.queries(), 3);
    }

    #[test]
    fn dns_aaaa_known_name_nodata() {
        let s = server();
        let q = query(9, "a.partner.example", TYPE_AAAA);
        let p = parse(&ask(&s, &q), &q[HEADER_LEN..]);
        assert_eq!(rcode(&p), 0);
        assert_eq!((p.qdcount, p.ancount), (1, 0));
        assert_eq!(s.queries(), 1);
    }

    #[test]
    fn dns_mixed_case_names() {
        let s = server();
        // A 0x20-randomised query: answered, and its case kept in the echoed question.
        let q = query(11, "A.pArTnEr.EXAMPLE", TYPE_A);
        let p = parse(&ask(&s, &q), &q[HEADER_LEN..]);
        assert_eq!(p.answers, vec![(TYPE_A, 5, vec![127, 0, 0, 1])]);
        // A table name with capitals and a trailing dot.
        let q = query(12, "b.other.example", TYPE_A);
        let p = parse(&ask(&s, &q), &q[HEADER_LEN..]);
        assert_eq!(p.answers, vec![(TYPE_A, 5, vec![127, 0, 0, 2])]);
    }

    #[test]
    fn dns_garbage_is_ignored_and_server_keeps_working() {
        let s = server();
        let good = query(13, "a.partner.example", TYPE_A);
        let mut response_bit = good.clone();
        response_bit[2] |= 0x80;
        let mut pointer = good[..HEADER_LEN].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let mut endless = good[..HEADER_LEN].to_vec();
        endless.extend(std::iter::repeat_n([63u8; 64], 6).flatten()); // labels past 255 bytes
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x12],
            good[..5].to_vec(),
            good[..HEADER_LEN + 3].to_vec(),  // name cut short
            good[..good.len() - 1].to_vec(),  // QCLASS cut short
            good[..HEADER_LEN + 19].to_vec(), // name without QTYPE
            response_bit,
            pointer,
            endless,
            vec![0xff; 600],
        ];
        let c = client();
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        for g in &garbage {
            c.send_to(g, s.addr()).unwrap();
        }
        let mut buf = [0u8; 1500];
        let err = c.recv_from(&mut buf).unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
        assert_eq!(s.queries(), 0);
        let p = parse(&ask(&s, &good), &good[HEADER_LEN..]);
        assert_eq!(p.answers, vec![(TYPE_A, 5, vec![127, 0, 0, 1])]);
        assert_eq!(s.queries(), 1);
    }

    #[test]
    fn dns_other_opcode_or_question_count() {
        let s = server();
        let mut notify = query(14, "a.partner.example", TYPE_A);
        notify[2] = 0x20; // opcode 4 (NOTIFY)
        let p = parse(&ask(&s, &notify), &[]);
        assert_eq!((rcode(&p), p.qdcount, p.ancount), (4, 0, 0));
        let mut two = query(15, "a.partner.example", TYPE_A);
        two[5] = 2;
        let p = parse(&ask(&s, &two), &[]);
        assert_eq!((rcode(&p), p.qdcount, p.ancount), (1, 0, 0));
    }

    #[test]
    fn dns_invalid_table_names_and_drop() {
        for bad in ["a..b", ".", "", &"x".repeat(64)] {
            let err = DnsServer::start(&[(bad, Ipv4Addr::LOCALHOST)]).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let s = server();
        let started = std::time::Instant::now();
        drop(s);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
