//! Reader for one `torch.save` file (`consolidated.NN.pth`): a zip archive holding
//! `<top>/data.pkl` (the state dict's structure, read by [`super::pickle`]) and one raw
//! little-endian record per storage, `<top>/data/<key>`.
//!
//! The file is memory-mapped; storages stored uncompressed (as `torch.save` always
//! writes them) become zero-copy [`Storage::Mapped`] views, compressed ones are read
//! into memory.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use zip::{CompressionMethod, ZipArchive};

use super::pickle::{parse_state_dict, TensorRef};
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Largest `data.pkl` accepted; real state dicts need a few hundred KiB.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Where one storage record's bytes are.
#[derive(Clone)]
enum Record {
    /// `offset..offset + len` of the mapping.
    Mapped { offset: usize, len: usize },
    /// Decompressed into memory.
    Owned(Arc<Vec<u8>>),
}

impl Record {
    fn len(&self) -> usize {
        match self {
            Record::Mapped { len, .. } => *len,
            Record::Owned(v) => v.len(),
        }
    }
}

/// Loads every tensor of a `torch.save` state dict, in the order the file lists them.
///
/// Tensors must be C-contiguous and of dtype bf16, f16 or f32; their bytes are checked
/// to lie inside their storage record. Nothing in the pickle is executed.
pub fn load_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |msg: String| Error::checkpoint(path, msg);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len == 0 {
        return Err(bad("the file is empty".into()));
    }
    // SAFETY: the mapping is only ever read, and the file is opened read-only. As with
    // every mmap, another process truncating or rewriting the checkpoint while it is
    // mapped would be undefined behaviour; we accept that usual caveat for zero-copy
    // loading of multi-gigabyte weights, as every inference engine does.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let mut zip = ZipArchive::new(std::io::Cursor::new(&map[..])).map_err(|e| {
        bad(format!(
            "not a torch.save zip archive ({e}); legacy non-zip .pth files are not supported"
        ))
    })?;

    let top = top_folder(&zip).map_err(bad)?;
    check_byteorder(&mut zip, &top).map_err(bad)?;

    let pkl_name = format!("{top}/data.pkl");
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES).map_err(bad)?;
    let refs = parse_state_dict(&pkl).map_err(|e| bad(format!("{pkl_name}: {e}")))?;

    // The bytes of each record its tensors read: a compressed record is inflated only
    // that far.
    let mut needed: HashMap<&str, u64> = HashMap::new();
    for (name, r) in &refs {
        let end = (|| {
            let numel = r.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            r.offset.checked_add(numel)?.checked_mul(r.dtype.size())
        })()
        .ok_or_else(|| bad(format!("tensor '{name}': its size overflows")))?;
        let e = needed.entry(r.storage_key.as_str()).or_default();
        *e = (*e).max(end as u64);
    }
    let needed: HashMap<String, u64> = needed
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut records: HashMap<String, Record> = HashMap::new();
    // Stored records' byte ranges, checked for overlaps once all are known.
    let mut stored: Vec<(usize, usize, String)> = Vec::new();
    let mut inflated = 0u64;
    let mut out = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        let record = match records.get(&r.storage_key) {
            Some(rec) => rec.clone(),
            None => {
                let want = needed.get(&r.storage_key).copied().unwrap_or(0);
                // Never inflate past what the file may inflate to in all.
                let room = MAX_INFLATED_BYTES - inflated;
                let rec = find_record(&mut zip, &top, &r.storage_key, &map[..], want, room)
                    .map_err(|m| bad(format!("tensor '{name}': {m}")))?;
                match &rec {
                    // Two records sharing bytes: a central directory pointing one entry
                    // at another's data.
                    Record::Mapped { offset, len } => {
                        if *len > 0 {
                            stored.push((*offset, offset + len, r.storage_key.clone()));
                        }
                    }
                    Record::Owned(v) => inflated += v.len() as u64,
                }
                records.insert(r.storage_key.clone(), rec.clone());
                rec
            }
        };
        let (start, len) =
            tensor_range(&r, record.len()).map_err(|m| bad(format!("tensor '{name}': {m}")))?;
        let storage = match record {
            Record::Mapped { offset, .. } => Storage::Mapped {
                map: Arc::clone(&map),
                offset: offset + start, // cannot overflow: both lie within the mapping
                len,
            },
            Record::Owned(v) if start == 0 && len == v.len() => Storage::Owned(v),
            Record::Owned(v) => Storage::Owned(Arc::new(v[start..start + len].to_vec())),
        };
        out.push((
            name,
            Tensor {
                dtype: r.dtype,
                shape: r.shape,
                storage,
            },
        ));
    }
    // Two records sharing bytes: a central directory pointing one entry at another's
    // data.
    stored.sort_unstable();
    if let Some(w) = stored.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(bad(format!(
            "storage records {} and {} overlap in the archive",
            w[0].2.escape_debug(),
            w[1].2.escape_debug()
        )));
    }
    Ok(out)
}

/// The single top-level folder holding `data.pkl` (its name varies between writers).
fn top_folder<R: Read + std::io::Seek>(zip: &ZipArchive<R>) -> Result<String, String> {
    let mut tops: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter_map(|n| n.strip_suffix("/data.pkl").map(str::to_owned))
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .collect();
    tops.sort();
    tops.dedup();
    match tops.len() {
        1 => Ok(tops.remove(0)),
        0 => Err("no <folder>/data.pkl entry in the archive (not a torch.save file?)".into()),
        n => Err(format!(
            "{n} top-level folders hold a data.pkl; expected exactly one"
        )),
    }
}

/// `torch.save` records the writer's byte order; only little-endian data is supported.
fn check_byteorder<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    top: &str,
) -> Result<(), String> {
    let name = format!("{top}/byteorder");
    if zip.index_for_name(&name).is_none() {
        return Ok(()); // older writers omit it; they were little-endian only
    }
    let bytes = read_entry(zip, &name, 64)?;
    match std::str::from_utf8(&bytes).map(str::trim) {
        Ok("little") => Ok(()),
        Ok(other) => Err(format!(
            "byte order '{}' is not supported (only little-endian checkpoints are)",
            other.escape_debug()
        )),
        Err(_) => Err(format!("{name} is not text")),
    }
}

/// Reads a whole (small) entry, refusing more than `limit` bytes.
fn read_entry<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let entry = zip
        .by_name(name)
        .map_err(|e| format!("cannot open {name}: {e}"))?;
    if entry.size() > limit {
        return Err(format!(
            "{name} is {} bytes, more than the {limit} allowed",
            entry.size()
        ));
    }
    let mut buf = Vec::new();
    // `take` bounds what a lying size field or a decompression bomb can produce.
    entry
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!("{name} is larger than the {limit} bytes allowed"));
    }
    Ok(buf)
}

/// Most bytes compressed records of one file may inflate to: torch.save stores records
/// uncompressed, so compressed ones are unusual and a deflated run of zeros (a 4 MB
/// file claiming gigabytes) must not become resident memory.
const MAX_INFLATED_BYTES: u64 = 1 << 30;

/// Locates the storage record `<top>/data/<key>`, of which the tensors read `needed`
/// bytes. A stored record's local header must agree with the central directory.
fn find_record<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    top: &str,
    key: &str,
    bytes: &[u8],
    needed: u64,
    inflate_room: u64,
) -> Result<Record, String> {
    let map_len = bytes.len();
    let name = format!("{top}/data/{key}");
    let index = zip.index_for_name(&name).ok_or_else(|| {
        format!(
            "storage record {} is missing from the archive",
            name.escape_debug()
        )
    })?;
    let entry = zip
        .by_index(index)
        .map_err(|e| format!("cannot open {name}: {e}"))?;
    if entry.encrypted() {
        return Err(format!("{name} is encrypted"));
    }
    let size = entry.size();
    let len = usize::try_from(size).map_err(|_| format!("{name} is too large"))?;
    // The local header must name the same entry with the same method as the central
    // directory (a crafted directory could point one name at another's data).
    let local = usize::try_from(entry.header_start())
        .ok()
        .and_then(|h| bytes.get(h..h.checked_add(30)?).map(|hdr| (h, hdr)));
    let Some((h, hdr)) = local else {
        return Err(format!("{name}: its local header lies outside the file"));
    };
    let u16_at = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]);
    let name_len = usize::from(u16_at(26));
    let local_name = bytes.get(h + 30..(h + 30).saturating_add(name_len));
    let method = match entry.compression() {
        CompressionMethod::Stored => Some(0),
        CompressionMethod::Deflated => Some(8),
        _ => None,
    };
    if hdr[..4] != *b"PK\x03\x04"
        || local_name != Some(entry.name_raw())
        || method.is_some_and(|m| u16_at(8) != m)
    {
        return Err(format!(
            "{name}: the local header does not match the central directory"
        ));
    }
    if entry.compression() == CompressionMethod::Stored {
        let start = entry
            .data_start()
            .ok_or_else(|| format!("cannot locate the data of {name}"))?;
        let end = start.checked_add(size);
        if entry.compressed_size() != size || end.is_none_or(|e| e > map_len as u64) {
            return Err(format!("{name} extends past the end of the file"));
        }
        let offset = usize::try_from(start).map_err(|_| format!("{name} is too large"))?;
        return Ok(Record::Mapped { offset, len });
    }
    // Compressed records (not written by torch.save, but valid zips) are inflated only as
    // far as their tensors read, and never beyond the declared size.
    if needed > size {
        return Err(format!(
            "{name} holds {size} bytes but its tensors read {needed}"
        ));
    }
    if needed > inflate_room {
        return Err(format!(
            "{name} would inflate to {needed} bytes: compressed records may inflate to {} \
             MiB in all (torch.save stores records uncompressed)",
            MAX_INFLATED_BYTES >> 20
        ));
    }
    let mut buf = Vec::new();
    entry
        .take(needed)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if buf.len() as u64 != needed {
        return Err(format!("{name} is shorter than its declared {size} bytes"));
    }
    Ok(Record::Owned(Arc::new(buf)))
}

/// Byte range `(start, len)` of a contiguous tensor within its record of `record_len`
/// bytes, with every size computation checked.
fn tensor_range(r: &TensorRef, record_len: usize) -> Result<(usize, usize), String> {
    let overflow = || format!("size of shape {:?} overflows", r.shape);
    let numel = r
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    if numel > 0 {
        // C-contiguous: stride[i] = product of the later sizes. Dimensions of size 1 may
        // carry any stride (PyTorch does not normalise them).
        let mut expect = 1usize;
        for (&d, &s) in r.shape.iter().zip(&r.stride).rev() {
            if d != 1 && s != expect {
                return Err(format!(
                    "tensor is not contiguous (shape {:?}, stride {:?}); only contiguous tensors are supported",
                    r.shape, r.stride
                ));
            }
            expect = expect.checked_mul(d).ok_or_else(overflow)?;
        }
    }
    let end_elems = r.offset.checked_add(numel).ok_or_else(overflow)?;
    if end_elems > r.storage_numel {
        return Err(format!(
            "elements {}..{} lie outside its storage of {} elements",
            r.offset, end_elems, r.storage_numel
        ));
    }
    let size = r.dtype.size();
    let start = r.offset.checked_mul(size).ok_or_else(overflow)?;
    let len = numel.checked_mul(size).ok_or_else(overflow)?;
    let end = end_elems.checked_mul(size).ok_or_else(overflow)?;
    if end > record_len {
        return Err(format!(
            "needs bytes {start}..{end} of storage record '{}', which holds only {record_len} bytes",
            r.storage_key.escape_debug()
        ));
    }
    Ok((start, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn tref(shape: &[usize], stride: &[usize], offset: usize, numel: usize) -> TensorRef {
        TensorRef {
            storage_key: "0".into(),
            dtype: DType::BF16,
            storage_numel: numel,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn a_compressed_record_inflates_only_what_is_read() {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated);
        w.start_file("m/data/0", opts).unwrap();
        w.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        assert!(bytes.len() < 1 << 20);
        let mut zip = ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
        match find_record(&mut zip, "m", "0", &bytes, 4096, MAX_INFLATED_BYTES).unwrap() {
            Record::Owned(v) => assert_eq!(v.len(), 4096),
            Record::Mapped { .. } => panic!("a deflated record is not mapped"),
        }
        // Tensors reading past the declared size, or an implausible amount: errors.
        assert!(find_record(
            &mut zip,
            "m",
            "0",
            &bytes,
            (64 << 20) + 1,
            MAX_INFLATED_BYTES
        )
        .is_err());
        assert!(find_record(&mut zip, "m", "0", &bytes, 4096, 4095).is_err());
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(tensor_range(&tref(&[2, 3], &[3, 1], 0, 6), 12), Ok((0, 12)));
        assert_eq!(tensor_range(&tref(&[3], &[1], 2, 6), 12), Ok((4, 6)));
        assert_eq!(tensor_range(&tref(&[1, 3], &[99, 1], 0, 3), 6), Ok((0, 6)));
        assert_eq!(tensor_range(&tref(&[], &[], 0, 1), 2), Ok((0, 2)));
        let e = tensor_range(&tref(&[2, 3], &[1, 2], 0, 6), 12).unwrap_err();
        assert!(e.contains("not contiguous"), "{e}");
        let e = tensor_range(&tref(&[2, 3], &[3, 1], 1, 6), 12).unwrap_err();
        assert!(e.contains("outside its storage"), "{e}");
        let e = tensor_range(&tref(&[2, 3], &[3, 1], 0, 6), 11).unwrap_err();
        assert!(e.contains("holds only 11 bytes"), "{e}");
        let e = tensor_range(&tref(&[usize::MAX, 3], &[3, 1], 0, 6), 12).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let e = tensor_range(&tref(&[2], &[1], usize::MAX, usize::MAX), 12).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
    }
}
