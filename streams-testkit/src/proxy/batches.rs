//! Just enough of the record-batch format (magic 2) to see transactions: each batch's offsets,
//! producer id, transactional and control flags, and the type of a control record.

/// What the proxy needs to know of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// Producer id (-1 for a non-idempotent producer).
    pub producer_id: i64,
    /// Producer epoch: a new producer with the same transactional id gets a higher one.
    pub producer_epoch: i16,
    /// Written inside a transaction.
    pub transactional: bool,
    /// A control batch: a transaction marker.
    pub control: Option<ControlType>,
    /// Where the batch ends in the `records` bytes it was parsed from.
    pub end_position: usize,
}

/// The type of a control record (its key's second field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    /// The transaction was aborted.
    Abort,
    /// The transaction was committed.
    Commit,
    /// Another control record type (Kafka has more for KRaft); it ends no transaction.
    Other(i16),
}

const HEADER_LEN: usize = 61;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// Parses the batches in a Fetch response's `records`. A batch cut off at the end (a fetch is
/// limited in bytes) and anything that is not a magic-2 batch end the list: what comes back is
/// always a prefix of the log, in order.
pub fn parse(mut records: &[u8]) -> Vec<BatchInfo> {
    let mut out = Vec::new();
    let mut position = 0;
    while records.len() >= 17 {
        let base_offset = i64::from_be_bytes(records[0..8].try_into().unwrap());
        let batch_len = i32::from_be_bytes(records[8..12].try_into().unwrap());
        let magic = records[16] as i8;
        if batch_len < 0 {
            break;
        }
        let total = 12 + batch_len as usize;
        if records.len() < total {
            break; // truncated by the fetch size limit
        }
        if magic != 2 || total < HEADER_LEN {
            // Message formats 0 and 1 carry no transactions; nisshi writes format 2 only.
            break;
        }
        let batch = &records[..total];
        let attributes = i16::from_be_bytes(batch[21..23].try_into().unwrap());
        let last_offset_delta = i32::from_be_bytes(batch[23..27].try_into().unwrap());
        let producer_id = i64::from_be_bytes(batch[43..51].try_into().unwrap());
        let producer_epoch = i16::from_be_bytes(batch[51..53].try_into().unwrap());
        let control = if attributes & ATTR_CONTROL != 0 {
            Some(control_type(&batch[HEADER_LEN..]).unwrap_or(ControlType::Other(-1)))
        } else {
            None
        };
        out.push(BatchInfo {
            base_offset,
            last_offset: base_offset + i64::from(last_offset_delta),
            producer_id,
            producer_epoch,
            transactional: attributes & ATTR_TRANSACTIONAL != 0,
            control,
            end_position: position + total,
        });
        position += total;
        records = &records[total..];
    }
    out
}

/// The type in the key of the first record of a control batch (control batches are never
/// compressed). Record: length, attributes, timestamp delta, offset delta, key length, key.
fn control_type(mut record: &[u8]) -> Option<ControlType> {
    let _length = varint(&mut record)?;
    record = record.get(1..)?; // attributes
    let _timestamp_delta = varint(&mut record)?;
    let _offset_delta = varint(&mut record)?;
    let key_len = varint(&mut record)?;
    if key_len < 4 {
        return None;
    }
    let key = record.get(..4)?;
    let kind = i16::from_be_bytes([key[2], key[3]]);
    Some(match kind {
        0 => ControlType::Abort,
        1 => ControlType::Commit,
        other => ControlType::Other(other),
    })
}

/// A zig-zag varint (as records use), at most 64 bits.
fn varint(buf: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *buf.get(i)?;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }

    /// A magic-2 batch with the fields the parser reads; records are placeholders except for a
    /// control batch, which gets a real control record.
    pub(crate) fn batch(
        base: i64,
        count: i32,
        pid: i64,
        transactional: bool,
        control: Option<i16>,
    ) -> Vec<u8> {
        let mut body = Vec::new(); // everything after batch_length
        body.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        body.push(2); // magic
        body.extend_from_slice(&0u32.to_be_bytes()); // crc (not checked here)
        let mut attrs = 0i16;
        if transactional {
            attrs |= ATTR_TRANSACTIONAL;
        }
        if control.is_some() {
            attrs |= ATTR_CONTROL;
        }
        body.extend_from_slice(&attrs.to_be_bytes());
        body.extend_from_slice(&(count - 1).to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(&pid.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&count.to_be_bytes());
        match control {
            Some(kind) => {
                let mut rec = vec![0u8]; // attributes
                put_varint(&mut rec, 0); // timestamp delta
                put_varint(&mut rec, 0); // offset delta
                put_varint(&mut rec, 4); // key length
                rec.extend_from_slice(&0i16.to_be_bytes());
                rec.extend_from_slice(&kind.to_be_bytes());
                put_varint(&mut rec, 6);
                rec.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                put_varint(&mut rec, 0); // headers
                put_varint(&mut body, rec.len() as i64);
                body.extend_from_slice(&rec);
            }
            None => body.extend_from_slice(&[0u8; 8]),
        }
        let mut out = base.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as i32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn parses_data_and_control_batches() {
        let mut log = batch(0, 3, 7, true, None);
        log.extend(batch(3, 1, 7, true, Some(0)));
        log.extend(batch(4, 2, -1, false, None));
        log.extend(batch(6, 1, 9, true, Some(1)));
        let got = parse(&log);
        assert_eq!(got.len(), 4);
        assert_eq!((got[0].base_offset, got[0].last_offset), (0, 2));
        assert!(got[0].transactional && got[0].control.is_none());
        assert_eq!(got[1].control, Some(ControlType::Abort));
        assert!(!got[2].transactional);
        assert_eq!(got[3].control, Some(ControlType::Commit));
        assert_eq!(got[3].producer_id, 9);
        assert_eq!(got[3].end_position, log.len());
        assert_eq!(parse(&log[..got[1].end_position]).len(), 2);
    }

    #[test]
    fn a_truncated_last_batch_is_left_out() {
        let mut log = batch(0, 3, 7, true, None);
        let second = batch(3, 1, 7, true, Some(0));
        log.extend_from_slice(&second[..second.len() - 3]);
        assert_eq!(parse(&log).len(), 1);
        assert!(parse(&log[..10]).is_empty());
    }
}
