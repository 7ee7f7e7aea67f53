//! A small, read-only reader of bbolt (`go.etcd.io/bbolt`) files, as etcd 3.4-3.6 writes them.
//!
//! Layout (all integers little-endian, as bbolt writes them on amd64/arm64):
//! ```text
//! page header (16 bytes): id u64, flags u16, count u16, overflow u32
//!   flags: 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist
//! meta (after the page header of pages 0 and 1):
//!   magic u32 = 0xED0CDAED, version u32 = 2, page_size u32, flags u32,
//!   root bucket {root pgid u64, sequence u64}, freelist pgid u64, high-water pgid u64,
//!   txid u64, checksum u64 = FNV-1a 64 of the 56 bytes before it
//! branch element (16 bytes): pos u32, ksize u32, pgid u64     (key at element + pos)
//! leaf element (16 bytes):   flags u32, pos u32, ksize u32, vsize u32 (flags 0x01 = bucket)
//! bucket value: root pgid u64, sequence u64; root 0 = inline bucket, its page follows
//! ```
//! A page spans `(1 + overflow) * page_size` bytes. Every offset and length read from the file
//! is checked against the page it belongs to and the file size before use, page ids against the
//! high-water mark, and tree walks are bounded in depth and in the number of pages visited, so a
//! corrupt file gives [`ImportError::Corrupt`] and never a panic, a loop or a large allocation.
//! bbolt has no page checksums: a flipped bit inside a key or value of a data page is only
//! caught by the checks of whoever decodes the value (see [`crate::etcd`]).

use crate::error::ImportError;

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only bbolt file format version.
pub const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_BODY: usize = 64;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
/// Leaf element flag of a nested bucket.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 1 << 20;
const MAX_DEPTH: usize = 64;

/// The decoded meta page bbolt would open the file with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Which meta page (0 or 1) it is.
    pub page: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// Root page of the root bucket.
    pub root: u64,
    /// Freelist page (`u64::MAX` when the freelist is not synced).
    pub freelist: u64,
    /// High-water mark: the number of pages in use.
    pub pgid: u64,
    /// Transaction id of the last commit.
    pub txid: u64,
}

/// One leaf element of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value (a bucket header when [`is_bucket`](Self::is_bucket)).
    pub value: &'a [u8],
    /// True for a nested bucket.
    pub is_bucket: bool,
}

/// A validated bbolt file held in memory.
#[derive(Debug, Clone, Copy)]
pub struct BoltFile<'a> {
    data: &'a [u8],
    meta: Meta,
}

/// FNV-1a, 64 bits (bbolt's meta checksum).
pub fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn corrupt(page: u64, reason: impl Into<String>) -> ImportError {
    ImportError::Corrupt {
        page,
        reason: reason.into(),
    }
}

fn slice(data: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    data.get(at..at.checked_add(len)?)
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(slice(data, at, 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(slice(data, at, 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(slice(data, at, 8)?.try_into().ok()?))
}

/// Decodes the meta page starting at byte `at`, if it is a valid one.
fn read_meta(data: &[u8], at: usize, page: u64) -> Option<Meta> {
    let body = slice(data, at.checked_add(PAGE_HEADER)?, META_BODY)?;
    let flags = u16_at(data, at.checked_add(8)?)?;
    let magic = u32_at(body, 0)?;
    let version = u32_at(body, 4)?;
    let checksum = u64_at(body, 56)?;
    if flags & FLAG_META == 0
        || magic != MAGIC
        || version != VERSION
        || checksum != fnv64a(&body[..56])
    {
        return None;
    }
    let page_size = u32_at(body, 8)?;
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    Some(Meta {
        page,
        page_size,
        root: u64_at(body, 16)?,
        freelist: u64_at(body, 32)?,
        pgid: u64_at(body, 40)?,
        txid: u64_at(body, 48)?,
    })
}

/// Whether `data` starts like a bbolt file (a page header then the meta magic).
pub fn has_magic(data: &[u8]) -> bool {
    u32_at(data, PAGE_HEADER) == Some(MAGIC)
}

impl<'a> BoltFile<'a> {
    /// Validates both meta pages of `data` (the whole file, without any trailer) and picks the
    /// one with the highest transaction id, as bbolt does.
    ///
    /// Errors: [`ImportError::Empty`], [`ImportError::NotBbolt`] when neither meta page carries
    /// the magic, [`ImportError::NoValidMeta`] when no meta page checks out,
    /// [`ImportError::Corrupt`] when one of them does not (bbolt would fall back to the older
    /// transaction of the other; an import does not),
    /// [`ImportError::Truncated`] when the file is shorter than its high-water mark.
    pub fn open(data: &'a [u8]) -> Result<Self, ImportError> {
        if data.is_empty() {
            return Err(ImportError::Empty);
        }
        let meta0 = read_meta(data, 0, 0);
        // Meta page 1 sits one page further; without a valid page 0 the page size is unknown,
        // so every possible one is tried.
        let meta1 = match meta0 {
            Some(m) => read_meta(data, m.page_size as usize, 1),
            None => (MIN_PAGE_SIZE.trailing_zeros()..=MAX_PAGE_SIZE.trailing_zeros())
                .filter_map(|shift| {
                    let ps = 1u32 << shift;
                    read_meta(data, ps as usize, 1).filter(|m| m.page_size == ps)
                })
                .next(),
        };
        // bbolt would open a file with one damaged meta page from the other one, i.e. at an
        // older transaction; an import refuses that: both must check out.
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => {
                // A file cut short is reported as such, not as a damaged meta page.
                let needed = m.pgid.saturating_mul(u64::from(m.page_size));
                if (data.len() as u64) < needed {
                    return Err(ImportError::Truncated {
                        len: data.len() as u64,
                        needed,
                    });
                }
                return Err(corrupt(1 - m.page, "meta page fails its checks"));
            }
            (None, None) => {
                let magic = has_magic(data)
                    || (MIN_PAGE_SIZE.trailing_zeros()..=MAX_PAGE_SIZE.trailing_zeros())
                        .any(|shift| u32_at(data, (1usize << shift) + PAGE_HEADER) == Some(MAGIC));
                return Err(if magic {
                    ImportError::NoValidMeta
                } else {
                    ImportError::NotBbolt
                });
            }
        };
        let ps = u64::from(meta.page_size);
        let needed = meta.pgid.checked_mul(ps).ok_or_else(|| {
            corrupt(
                meta.page,
                format!("high-water mark {} overflows", meta.pgid),
            )
        })?;
        if (data.len() as u64) < needed {
            return Err(ImportError::Truncated {
                len: data.len() as u64,
                needed,
            });
        }
        if meta.pgid < 3 || meta.root < 2 || meta.root >= meta.pgid {
            return Err(corrupt(
                meta.page,
                format!("root page {} outside 2..{}", meta.root, meta.pgid),
            ));
        }
        Ok(BoltFile { data, meta })
    }

    /// The meta page in use.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The bytes of page `pgid` including its overflow pages, checked against the file.
    fn page(&self, pgid: u64) -> Result<(&'a [u8], u16, u16), ImportError> {
        if pgid < 2 || pgid >= self.meta.pgid {
            return Err(corrupt(
                pgid,
                format!("page id outside 2..{}", self.meta.pgid),
            ));
        }
        let ps = u64::from(self.meta.page_size);
        let start = pgid * ps; // pgid < high-water mark, whose product was checked
        let head = usize::try_from(start)
            .ok()
            .and_then(|s| slice(self.data, s, PAGE_HEADER))
            .ok_or_else(|| corrupt(pgid, "page header beyond the end of the file"))?;
        let id = u64_at(head, 0).unwrap_or(u64::MAX);
        let flags = u16_at(head, 8).unwrap_or(0);
        let count = u16_at(head, 10).unwrap_or(0);
        let overflow = u64::from(u32_at(head, 12).unwrap_or(0));
        if id != pgid {
            return Err(corrupt(pgid, format!("page header names page {id}")));
        }
        if pgid + overflow >= self.meta.pgid {
            return Err(corrupt(
                pgid,
                format!("{overflow} overflow pages run past the high-water mark"),
            ));
        }
        let len = (overflow + 1) * ps;
        let bytes = usize::try_from(start)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(s, l)| slice(self.data, s, l))
            .ok_or_else(|| corrupt(pgid, "page beyond the end of the file"))?;
        Ok((bytes, flags, count))
    }

    /// The entries of the root bucket (the top-level buckets and any top-level keys).
    pub fn root_entries(&self) -> Result<Vec<Entry<'a>>, ImportError> {
        let mut out = Vec::new();
        let mut budget = self.meta.pgid;
        self.walk(self.meta.root, 0, &mut budget, &mut out)?;
        check_sorted(self.meta.root, &out)?;
        Ok(out)
    }

    /// The entries of top-level bucket `name`, in key order; `None` when there is no such
    /// bucket. [`ImportError::Corrupt`] when `name` is a plain key or the bucket is malformed.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Vec<Entry<'a>>>, ImportError> {
        let Some(e) = self.root_entries()?.into_iter().find(|e| e.key == name) else {
            return Ok(None);
        };
        if !e.is_bucket {
            return Err(corrupt(
                self.meta.root,
                format!("{} is a key, not a bucket", String::from_utf8_lossy(name)),
            ));
        }
        self.bucket_entries(e.value).map(Some)
    }

    /// The entries of the bucket whose header (a leaf value with the bucket flag) is `header`.
    pub fn bucket_entries(&self, header: &'a [u8]) -> Result<Vec<Entry<'a>>, ImportError> {
        let root = u64_at(header, 0)
            .ok_or_else(|| corrupt(self.meta.root, "bucket header shorter than 16 bytes"))?;
        if header.len() < 16 {
            return Err(corrupt(
                self.meta.root,
                "bucket header shorter than 16 bytes",
            ));
        }
        let mut out = Vec::new();
        if root == 0 {
            let page = &header[16..];
            let flags = u16_at(page, 8).ok_or_else(|| corrupt(0, "inline bucket too short"))?;
            let count = u16_at(page, 10).ok_or_else(|| corrupt(0, "inline bucket too short"))?;
            if flags != FLAG_LEAF {
                return Err(corrupt(0, format!("inline bucket page flags {flags:#x}")));
            }
            leaf_entries(0, page, count, &mut out)?;
        } else {
            let mut budget = self.meta.pgid;
            self.walk(root, 0, &mut budget, &mut out)?;
        }
        check_sorted(root, &out)?;
        Ok(out)
    }

    fn walk(
        &self,
        pgid: u64,
        depth: usize,
        budget: &mut u64,
        out: &mut Vec<Entry<'a>>,
    ) -> Result<(), ImportError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(pgid, "tree deeper than 64 levels"));
        }
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| corrupt(pgid, "tree visits more pages than the file holds"))?;
        let (page, flags, count) = self.page(pgid)?;
        match flags {
            FLAG_BRANCH => {
                if count == 0 {
                    return Err(corrupt(pgid, "empty branch page"));
                }
                for i in 0..usize::from(count) {
                    let at = PAGE_HEADER + i * ELEMENT;
                    let elem = slice(page, at, ELEMENT)
                        .ok_or_else(|| corrupt(pgid, "branch elements beyond the page"))?;
                    let pos = u32_at(elem, 0).unwrap_or(u32::MAX) as usize;
                    let ksize = u32_at(elem, 4).unwrap_or(u32::MAX) as usize;
                    let child = u64_at(elem, 8).unwrap_or(u64::MAX);
                    at.checked_add(pos)
                        .and_then(|k| slice(page, k, ksize))
                        .ok_or_else(|| corrupt(pgid, format!("branch key {i} beyond the page")))?;
                    self.walk(child, depth + 1, budget, out)?;
                }
                Ok(())
            }
            FLAG_LEAF => leaf_entries(pgid, page, count, out),
            other => Err(corrupt(pgid, format!("unexpected page flags {other:#x}"))),
        }
    }
}

fn leaf_entries<'a>(
    pgid: u64,
    page: &'a [u8],
    count: u16,
    out: &mut Vec<Entry<'a>>,
) -> Result<(), ImportError> {
    for i in 0..usize::from(count) {
        let at = PAGE_HEADER + i * ELEMENT;
        let elem = slice(page, at, ELEMENT)
            .ok_or_else(|| corrupt(pgid, "leaf elements beyond the page"))?;
        let flags = u32_at(elem, 0).unwrap_or(u32::MAX);
        let pos = u32_at(elem, 4).unwrap_or(u32::MAX) as usize;
        let ksize = u32_at(elem, 8).unwrap_or(u32::MAX) as usize;
        let vsize = u32_at(elem, 12).unwrap_or(u32::MAX) as usize;
        if flags & !BUCKET_LEAF_FLAG != 0 {
            return Err(corrupt(pgid, format!("leaf element {i} flags {flags:#x}")));
        }
        let kv = at
            .checked_add(pos)
            .and_then(|k| Some((k, ksize.checked_add(vsize)?)))
            .and_then(|(k, len)| slice(page, k, len))
            .ok_or_else(|| corrupt(pgid, format!("leaf element {i} beyond the page")))?;
        let (key, value) = kv.split_at(ksize);
        out.push(Entry {
            key,
            value,
            is_bucket: flags & BUCKET_LEAF_FLAG != 0,
        });
    }
    Ok(())
}

fn check_sorted(pgid: u64, entries: &[Entry<'_>]) -> Result<(), ImportError> {
    match entries.windows(2).position(|w| w[0].key >= w[1].key) {
        Some(i) => Err(corrupt(
            pgid,
            format!("keys out of order at element {}", i + 1),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64a_known_values() {
        assert_eq!(fnv64a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn rejects_non_bbolt_and_broken_metas() {
        assert!(matches!(BoltFile::open(&[]), Err(ImportError::Empty)));
        assert!(matches!(
            BoltFile::open(&[0; 4096]),
            Err(ImportError::NotBbolt)
        ));
        let mut page = vec![0u8; 8192];
        page[16..20].copy_from_slice(&MAGIC.to_le_bytes());
        assert!(matches!(
            BoltFile::open(&page),
            Err(ImportError::NoValidMeta)
        ));
    }
}
