//! Hand-encoded protobuf and raw-bytes gRPC methods, for tests that must
//! not depend on the `protobuf` release the binaries decode with (the
//! RUSTSEC-2024-0437 tests of the hub and the agent). Behind the `raw`
//! feature: only dev-dependencies turn it on.

use std::io::Read;

use grpcio::{GrpcSlice, Marshaller, MessageReader, Method, MethodType};

/// A field number no message of `agent.proto` has (one-byte tags).
pub const UNKNOWN_FIELD: u32 = 15;
/// Nesting depth of the start-group payloads (one byte per level each way).
pub const GROUP_DEPTH: usize = 500_000;
/// Nesting depth of the length-delimited payload (~400 KB).
pub const LEN_DEPTH: usize = 100_000;

#[allow(clippy::ptr_arg)] // the marshaller's signature is fixed: `fn(&T, ..)`
fn raw_ser(bytes: &Vec<u8>, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    *buf = GrpcSlice::from(bytes.clone());
    Ok(())
}

fn raw_de(mut reader: MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(bytes)
}

/// Passes bytes through unchanged, both ways.
pub const RAW: Marshaller<Vec<u8>> = Marshaller { ser: raw_ser, de: raw_de };

/// A method of `name` (`/aymc.agent.v1.AgentService/Ping`, ...) whose
/// requests and responses are raw bytes.
pub fn method(ty: MethodType, name: &'static str) -> Method<Vec<u8>, Vec<u8>> {
    Method { ty, name, req_mar: RAW, resp_mar: RAW }
}

/// Appends `v` as a base-128 varint.
pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint from the front of `bytes`; `None` when cut short.
pub fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A one-byte tag. Panics for fields that need more (a test's mistake).
pub fn tag(field: u32, wire_type: u8) -> u8 {
    let t = (field << 3) | u32::from(wire_type);
    assert!(t < 0x80, "one-byte tags only");
    t as u8
}

/// Appends a varint field.
pub fn put_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    out.push(tag(field, 0));
    varint(v, out);
}

/// Appends a length-delimited field.
pub fn put_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag(field, 2));
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `depth` start-group tags of an unknown field, closed by as many end-group tags.
pub fn nested_groups(depth: usize) -> Vec<u8> {
    let mut out = vec![tag(UNKNOWN_FIELD, 3); depth];
    out.resize(2 * depth, tag(UNKNOWN_FIELD, 4));
    out
}

/// `depth` start-group tags, never closed.
pub fn open_groups(depth: usize) -> Vec<u8> {
    vec![tag(UNKNOWN_FIELD, 3); depth]
}

/// An unknown length-delimited field holding one, holding one, ... `depth` deep.
pub fn nested_lengths(depth: usize) -> Vec<u8> {
    // Content lengths from the innermost (empty) outwards.
    let mut lens = Vec::with_capacity(depth);
    let mut len = 0u64;
    for _ in 0..depth {
        lens.push(len);
        let mut v = Vec::new();
        varint(len, &mut v);
        len += 1 + v.len() as u64;
    }
    let mut out = Vec::with_capacity(len as usize);
    for l in lens.iter().rev() {
        out.push(tag(UNKNOWN_FIELD, 2));
        varint(*l, &mut out);
    }
    out
}

/// The field `field` of wire type varint in a message, if present (the
/// last one wins, as protobuf says); other fields are skipped.
pub fn varint_field(mut msg: &[u8], field: u64) -> Option<u64> {
    let mut found = None;
    while let Some(key) = read_varint(&mut msg) {
        match (key >> 3, key & 7) {
            (f, 0) => {
                let v = read_varint(&mut msg)?;
                if f == field {
                    found = Some(v);
                }
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(&mut msg)?).ok()?;
                msg = msg.get(len..)?;
            }
            _ => break,
        }
    }
    found
}
