//! The server name (SNI) of a TLS ClientHello, read from the first bytes a client sends: for `tls`
//! passthrough destinations, where the caller's own TLS runs end to end and the gateway checks that it
//! names the host the decision allowed.
//!
//! The ClientHello may span several TLS records; bytes are parsed as they arrive and at most
//! [`MAX_CLIENT_HELLO`] are looked at. Malformed input is an error, never a panic.

/// The most bytes of a connection's start that are read to find the ClientHello.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
/// encrypted_client_hello (RFC 9849): the real ClientHello, server name included, is encrypted.
const EXTENSION_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
/// encrypted_server_name, of the ESNI drafts that preceded ECH.
const EXTENSION_ENCRYPTED_SERVER_NAME: u16 = 0xffce;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// More bytes are needed.
    Incomplete,
    /// A ClientHello naming this server (as sent, not normalized).
    ServerName(String),
    /// A ClientHello without a server name.
    NoServerName,
    /// A server_name extension listing more than one name (RFC 6066 forbids two of one type): which one the
    /// partner serves is the partner's choice.
    MultipleServerNames,
    /// More than one server_name extension (RFC 8446 4.2 forbids it): which one counts is the partner's choice.
    MultipleServerNameExtensions,
    /// A server_name entry of another type than host_name.
    NotHostName,
    /// An encrypted ClientHello (ECH) or server name (ESNI): the name the partner serves is hidden; the outer
    /// server name, if any, names the client-facing server.
    Encrypted(Option<String>),
    /// Not a TLS ClientHello (or longer than [`MAX_CLIENT_HELLO`]).
    NotClientHello,
}

/// Reads the ClientHello at the start of `data`.
pub fn parse(data: &[u8]) -> ClientHello {
    match handshake(data) {
        Err(Short) if data.len() <= MAX_CLIENT_HELLO + 5 * 8 => ClientHello::Incomplete,
        Err(Short) | Ok(None) => ClientHello::NotClientHello,
        Ok(Some(body)) => server_name(&body).unwrap_or(ClientHello::NotClientHello),
    }
}

/// The input ended before what was being read.
struct Short;

/// The longest TLS record (RFC 8446 5.1: 2^14 bytes, plus expansion for protected records).
const MAX_RECORD: usize = 16 * 1024 + 256;

/// The ClientHello handshake message body (its 4-byte header removed), joined from the handshake records
/// at the start of `data`; `Ok(None)` when the bytes are not that.
fn handshake(data: &[u8]) -> Result<Option<Vec<u8>>, Short> {
    let mut message: Vec<u8> = Vec::new();
    let mut rest = Reader(data);
    loop {
        let (kind, major) = (rest.u8().ok_or(Short)?, rest.u8().ok_or(Short)?);
        rest.u8().ok_or(Short)?; // minor version
        let length = usize::from(rest.u16().ok_or(Short)?);
        if kind != RECORD_HANDSHAKE || major != 3 || length == 0 || length > MAX_RECORD {
            return Ok(None);
        }
        match rest.take(length) {
            Some(fragment) => message.extend_from_slice(fragment),
            None => {
                // The record is not complete yet: refuse early what its first bytes already rule out.
                let mut partial = message.clone();
                partial.extend_from_slice(rest.0);
                let mut header = Reader(&partial);
                return match (header.u8(), header.take(3)) {
                    (Some(kind), _) if kind != HANDSHAKE_CLIENT_HELLO => Ok(None),
                    (_, Some(size)) if size.iter().fold(0usize, |n, b| n << 8 | usize::from(*b)) > MAX_CLIENT_HELLO => {
                        Ok(None)
                    }
                    _ => Err(Short),
                };
            }
        }
        let mut header = Reader(&message);
        match header.u8() {
            Some(HANDSHAKE_CLIENT_HELLO) => {}
            Some(_) => return Ok(None),
            None => continue,
        }
        let Some(size) = header.take(3) else { continue };
        let size = size.iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
        if size > MAX_CLIENT_HELLO {
            return Ok(None);
        }
        if let Some(body) = header.take(size) {
            return Ok(Some(body.to_vec()));
        }
    }
}

/// A cursor over a byte slice whose reads fail at the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    /// A vector with a length prefix of 1 or 2 bytes.
    fn vector(&mut self, prefix: usize) -> Option<&'a [u8]> {
        let length = if prefix == 1 { usize::from(self.u8()?) } else { usize::from(self.u16()?) };
        self.take(length)
    }
}

/// The server_name extension of a ClientHello body (RFC 8446 4.1.2, RFC 6066 3), every extension read: an
/// ambiguous name (two in the list, two extensions, another type than host_name) wins over an encrypted
/// one, which wins over the name.
fn server_name(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vector(1)?; // legacy_session_id
    r.vector(2)?; // cipher_suites
    r.vector(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(ClientHello::NoServerName);
    }
    let mut extensions = Reader(r.vector(2)?);
    let (mut name, mut server_name_extensions, mut encrypted) = (None, 0usize, false);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector(2)?;
        match kind {
            EXTENSION_ENCRYPTED_CLIENT_HELLO | EXTENSION_ENCRYPTED_SERVER_NAME => encrypted = true,
            EXTENSION_SERVER_NAME => {
                server_name_extensions += 1;
                let mut names = Reader(Reader(data).vector(2)?);
                let mut entries = 0usize;
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    let entry = names.vector(2)?;
                    entries += 1;
                    if name_type != NAME_TYPE_HOST_NAME {
                        return Some(ClientHello::NotHostName);
                    }
                    name = Some(std::str::from_utf8(entry).ok()?.to_string());
                }
                if entries > 1 {
                    return Some(ClientHello::MultipleServerNames);
                }
            }
            _ => {}
        }
    }
    Some(match (server_name_extensions, encrypted, name) {
        (2.., _, _) => ClientHello::MultipleServerNameExtensions,
        (_, true, name) => ClientHello::Encrypted(name),
        (_, false, Some(name)) => ClientHello::ServerName(name),
        (_, false, None) => ClientHello::NoServerName,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    /// A ClientHello body with these extensions (type, data).
    fn body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend([7u8; 32]); // random
        b.push(0); // session id
        b.extend([0, 2, 0x13, 0x01]); // one cipher suite
        b.extend([1, 0]); // null compression
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        b.extend((ext.len() as u16).to_be_bytes());
        b.extend(ext);
        b
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![NAME_TYPE_HOST_NAME];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        (EXTENSION_SERVER_NAME, list)
    }

    /// The body as a handshake message split into records of at most `record` bytes.
    fn records(body: &[u8], record: usize) -> Vec<u8> {
        let mut message = vec![HANDSHAKE_CLIENT_HELLO, 0, (body.len() >> 8) as u8, body.len() as u8];
        message.extend(body);
        let mut out = Vec::new();
        for chunk in message.chunks(record) {
            out.extend([RECORD_HANDSHAKE, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn finds_the_server_name_among_extensions() {
        let hello =
            records(&body(&[(10, vec![0, 2, 0, 29]), sni("api.partner.example"), (43, vec![2, 3, 4])]), 1 << 14);
        assert_eq!(parse(&hello), ClientHello::ServerName("api.partner.example".into()));
        // Application data after the ClientHello does not matter.
        let mut more = hello.clone();
        more.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&more), ClientHello::ServerName("api.partner.example".into()));
        assert_eq!(parse(&records(&body(&[(10, vec![0, 2, 0, 29])]), 1 << 14)), ClientHello::NoServerName);
    }

    fn names(entries: &[(u8, &str)]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (EXTENSION_SERVER_NAME, data)
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn an_ambiguous_or_hidden_server_name_is_told_apart() {
        let parsed = |extensions: &[(u16, Vec<u8>)]| parse(&records(&body(extensions), 1 << 14));
        let (a, b) = ("a.example", "b.example");
        assert_eq!(parsed(&[names(&[(0, a), (0, b)])]), ClientHello::MultipleServerNames);
        assert_eq!(parsed(&[names(&[(0, a), (0, a)])]), ClientHello::MultipleServerNames);
        assert_eq!(parsed(&[sni(a), (10, vec![0, 2, 0, 29]), sni(b)]), ClientHello::MultipleServerNameExtensions);
        assert_eq!(parsed(&[sni(a), sni(a)]), ClientHello::MultipleServerNameExtensions);
        assert_eq!(parsed(&[names(&[(1, a)])]), ClientHello::NotHostName);
        assert_eq!(parsed(&[names(&[(0, a), (1, b)])]), ClientHello::NotHostName);
        let ech = (EXTENSION_ENCRYPTED_CLIENT_HELLO, vec![0; 8]);
        let esni = (EXTENSION_ENCRYPTED_SERVER_NAME, vec![0; 8]);
        assert_eq!(parsed(&[sni(a), ech.clone()]), ClientHello::Encrypted(Some(a.into())));
        assert_eq!(parsed(&[ech.clone(), sni(a)]), ClientHello::Encrypted(Some(a.into())));
        assert_eq!(parsed(&[esni]), ClientHello::Encrypted(None));
        // Ambiguity wins over encryption.
        assert_eq!(parsed(&[ech, names(&[(0, a), (0, b)])]), ClientHello::MultipleServerNames);
        // An empty list names nothing.
        assert_eq!(parsed(&[names(&[])]), ClientHello::NoServerName);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn waits_for_every_byte_and_joins_records() {
        let hello = records(&body(&[sni("api.partner.example")]), 1 << 14);
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), ClientHello::Incomplete, "cut at {cut}");
        }
        let split = records(&body(&[(21, vec![0; 300]), sni("eu.partner.example")]), 50);
        assert_eq!(parse(&split), ClientHello::ServerName("eu.partner.example".into()));
        assert_eq!(parse(&split[..split.len() - 1]), ClientHello::Incomplete);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn anything_else_is_not_a_client_hello() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ClientHello::NotClientHello);
        assert_eq!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), ClientHello::NotClientHello, "a ServerHello");
        assert_eq!(parse(&[22, 3, 1, 0, 0]), ClientHello::NotClientHello, "an empty record");
        let mut truncated = records(&body(&[sni("x.example")]), 1 << 14);
        // Claim more extension bytes than the message has.
        let len = truncated.len();
        truncated[len - 16] = 0xff;
        assert!(matches!(parse(&truncated), ClientHello::NotClientHello | ClientHello::ServerName(_)));
        let huge = [22, 3, 1, 0x40, 0x00, HANDSHAKE_CLIENT_HELLO, 0x01, 0x00, 0x00];
        assert_eq!(parse(&huge), ClientHello::NotClientHello, "a ClientHello over 16 KiB");
    }
}
