//! The few protobuf messages the filter hands Envoy's foreign functions, encoded by hand (wire format:
//! varint keys and lengths, length-delimited strings).

/// `field`'s key with wire type `wire` (0 varint, 2 length-delimited).
fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

/// A base-128 varint, least significant group first.
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let group = u8::try_from(value & 0x7f).unwrap_or(0);
        value >>= 7;
        if value == 0 {
            out.push(group);
            return;
        }
        out.push(group | 0x80);
    }
}

/// A length-delimited field (string or bytes).
pub fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    out.extend_from_slice(bytes);
}

/// A varint field (an enum, a bool).
pub fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, 0);
    varint(out, value);
}

/// `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments { string path = 1; string value = 2; }`
pub fn set_envoy_filter_state_arguments(path: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    bytes_field(&mut out, 1, path.as_bytes());
    bytes_field(&mut out, 2, value.as_bytes());
    out
}

/// `envoy.source.extensions.common.wasm.DeclarePropertyArguments { string name = 1; bool readonly = 2;
/// WasmType type = 3; bytes schema = 4; LifeSpan span = 5; }`, for a Protobuf (3) property.
pub fn declare_property_arguments(name: &str, schema: &str, span: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + schema.len() + 12);
    bytes_field(&mut out, 1, name.as_bytes());
    varint_field(&mut out, 3, 3);
    bytes_field(&mut out, 4, schema.as_bytes());
    varint_field(&mut out, 5, span);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_span_as_many_bytes_as_their_value_needs() {
        for (value, want) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (200, vec![0xc8, 0x01]),
            (255, vec![0xff, 0x01]),
            (300, vec![0xac, 0x02]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out, want, "{value}");
        }
    }

    /// Lengths from 128 to 255 need two bytes (a one-byte length was the bug: 0x80..0xff is a continuation).
    #[test]
    fn long_strings_get_multi_byte_lengths() {
        let value = "v".repeat(200);
        let encoded = set_envoy_filter_state_arguments("envoy.tcp_proxy.cluster", &value);
        let mut want = vec![0x0a, 23];
        want.extend_from_slice(b"envoy.tcp_proxy.cluster");
        want.extend_from_slice(&[0x12, 0xc8, 0x01]);
        want.extend_from_slice(value.as_bytes());
        assert_eq!(encoded, want);
        let name = "n".repeat(130);
        let declared = declare_property_arguments(&name, "type.googleapis.com/google.protobuf.Struct", 2);
        assert_eq!(declared.get(..3), Some(&[0x0a, 0x82, 0x01][..]));
        assert!(declared.ends_with(&[0x28, 2]), "{declared:?}");
    }
}
