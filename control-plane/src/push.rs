//! A push as it goes on the wire: a `TableSnapshot` framed as one gRPC
//! message (the Length-Prefixed-Message of the gRPC over HTTP/2 spec: a
//! compressed flag, a big-endian 4-byte length, the message).
//!
//! A version's push is encoded once and every stream sends the same
//! buffer, so a push costs a stream a reference count, not a copy of the
//! table, and a connected sidecar costs the replica no table-sized buffer
//! between pushes.

use bytes::{BufMut, Bytes, BytesMut};
use mesh::proto::mesh::v1::TableSnapshot;
use prost::Message;

/// Bytes before the message: the compressed flag and the length.
const PREFIX_LEN: usize = 5;

/// `snapshot` as one uncompressed gRPC message.
pub fn encode(snapshot: &TableSnapshot) -> Bytes {
    let len = snapshot.encoded_len();
    let mut frame = BytesMut::with_capacity(PREFIX_LEN + len);
    // Not compressed.
    frame.put_u8(0);
    // A table past 4 GiB cannot be framed; it is far past any limit a
    // client would accept anyway (tonic's default is 4 MiB).
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    snapshot.encode_raw(&mut frame);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_is_a_length_prefixed_table_snapshot() {
        let snapshot = TableSnapshot {
            version: 42,
            table_json: "{\"endpoints\":[],\"routes\":[]}".into(),
            file_descriptor_sets: vec![b"fds".to_vec()],
            grpc_services: vec!["shop.v1.Shop".into()],
            ..TableSnapshot::default()
        };
        let frame = encode(&snapshot);
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - PREFIX_LEN);
        let decoded = TableSnapshot::decode(&frame[PREFIX_LEN..]).expect("decode");
        assert_eq!(decoded, snapshot);
    }
}
