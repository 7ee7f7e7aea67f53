//! A small bbolt (`go.etcd.io/bbolt`) file writer: builds a new file in one pass from buckets
//! whose keys arrive sorted, in the layout [`crate::bbolt`] documents.
//!
//! * Pages 0 and 1 are the meta pages, page 2 an empty freelist page (every other page is in
//!   use, so `bbolt check` finds each page reachable or free).
//! * Each top-level bucket gets its own tree (no inline buckets): its sorted pairs are packed
//!   into leaf pages up to the page size; a pair too big for one page gets a page with
//!   overflow pages; leaves are joined by branch pages (each holding at least two children)
//!   until one root page remains. An empty bucket is one empty leaf page.
//! * The root bucket is a leaf (or tree) of bucket entries (leaf flag `0x01`, value = the
//!   16-byte bucket header `root pgid, sequence 0`), sorted by name.
//! * The meta page with transaction id `txid` is page `txid % 2` (as bbolt writes them); the
//!   other holds `txid - 1` and the same roots, so either is a valid view.
//!
//! Pages are written in allocation order as the keys arrive (only the first key of each page is
//! kept in memory for the branch pages); the meta and freelist pages are written last, by
//! seeking back to the start.

use std::io::{Seek, SeekFrom, Write};

use crate::bbolt::{fnv64a, BUCKET_LEAF_FLAG, MAGIC, VERSION};
use crate::error::ImportError;

/// The page size etcd's bbolt uses on amd64/arm64 Linux.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// bbolt's largest key (`MaxKeySize`).
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt's largest value (`MaxValueSize`).
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
const FREELIST_PAGE: u64 = 2;
const FIRST_DATA_PAGE: u64 = 3;

fn werr(reason: impl Into<String>) -> ImportError {
    ImportError::BoltWrite(reason.into())
}

/// Writes a new bbolt file to `W` (a fresh file, or a `Cursor<Vec<u8>>`).
#[derive(Debug)]
pub struct BoltWriter<W: Write + Seek> {
    out: W,
    page_size: usize,
    next: u64,
    buckets: Vec<(Vec<u8>, u64)>,
    io_path: std::path::PathBuf,
}

/// One element waiting for its leaf page.
#[derive(Debug)]
struct Pending {
    flags: u32,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Packs sorted pairs into leaf pages and, on [`finish`](BucketWriter::finish), builds the
/// branch pages above them. Obtained from [`BoltWriter::bucket`].
#[derive(Debug)]
pub struct BucketWriter<'a, W: Write + Seek> {
    w: &'a mut BoltWriter<W>,
    name: Vec<u8>,
    pending: Vec<Pending>,
    size: usize,
    /// `(first key, page id)` of every leaf written.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
    count: u64,
}

impl<W: Write + Seek> BoltWriter<W> {
    /// Starts a file on `out` (positioned at its start) with `page_size`-byte pages (a power of
    /// two from 512 to 1 MiB). `path` names the output in I/O errors.
    pub fn new(
        mut out: W,
        page_size: u32,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<Self, ImportError> {
        if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(werr(format!(
                "page size {page_size} is not a power of two in 512..=1 MiB"
            )));
        }
        let io_path = path.into();
        let ps = page_size as usize;
        // Meta and freelist pages are filled in by `finish`.
        out.write_all(&vec![0u8; ps * FIRST_DATA_PAGE as usize])
            .map_err(|source| ImportError::Io {
                path: io_path.clone(),
                source,
            })?;
        Ok(BoltWriter {
            out,
            page_size: ps,
            next: FIRST_DATA_PAGE,
            buckets: Vec::new(),
            io_path,
        })
    }

    /// Starts top-level bucket `name`; add its pairs in ascending key order, then call
    /// [`BucketWriter::finish`]. A name used twice is refused by [`finish`](Self::finish).
    pub fn bucket(&mut self, name: &[u8]) -> BucketWriter<'_, W> {
        BucketWriter {
            w: self,
            name: name.to_vec(),
            pending: Vec::new(),
            size: PAGE_HEADER,
            leaves: Vec::new(),
            last: None,
            count: 0,
        }
    }

    /// Pages allocated so far (the high-water mark).
    pub fn pages(&self) -> u64 {
        self.next
    }

    fn io(&self, source: std::io::Error) -> ImportError {
        ImportError::Io {
            path: self.io_path.clone(),
            source,
        }
    }

    /// Writes one page (with its overflow pages) holding `elements`, returns its id.
    fn write_page(
        &mut self,
        flags: u16,
        elements: &[(u32, &[u8], &[u8], u64)],
    ) -> Result<u64, ImportError> {
        let count = u16::try_from(elements.len())
            .map_err(|_| werr(format!("{} elements on one page", elements.len())))?;
        let payload: usize = elements
            .iter()
            .map(|(_, k, v, _)| ELEMENT + k.len() + v.len())
            .sum();
        let len = PAGE_HEADER + payload;
        let pages = len.div_ceil(self.page_size).max(1);
        let overflow = u32::try_from(pages - 1).map_err(|_| {
            werr(format!(
                "a page of {len} bytes needs too many overflow pages"
            ))
        })?;
        let id = self.next;
        let mut buf = vec![0u8; pages * self.page_size];
        buf[0..8].copy_from_slice(&id.to_le_bytes());
        buf[8..10].copy_from_slice(&flags.to_le_bytes());
        buf[10..12].copy_from_slice(&count.to_le_bytes());
        buf[12..16].copy_from_slice(&overflow.to_le_bytes());
        let mut data = PAGE_HEADER + elements.len() * ELEMENT;
        for (i, (eflags, k, v, child)) in elements.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = u32::try_from(data - at).map_err(|_| werr("page too large"))?;
            let ksize = u32::try_from(k.len()).map_err(|_| werr("key too large"))?;
            if flags == FLAG_BRANCH {
                buf[at..at + 4].copy_from_slice(&pos.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&ksize.to_le_bytes());
                buf[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            } else {
                let vsize = u32::try_from(v.len()).map_err(|_| werr("value too large"))?;
                buf[at..at + 4].copy_from_slice(&eflags.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                buf[at + 8..at + 12].copy_from_slice(&ksize.to_le_bytes());
                buf[at + 12..at + 16].copy_from_slice(&vsize.to_le_bytes());
            }
            buf[data..data + k.len()].copy_from_slice(k);
            data += k.len();
            buf[data..data + v.len()].copy_from_slice(v);
            data += v.len();
        }
        self.out.write_all(&buf).map_err(|e| self.io(e))?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Builds branch levels above `children` (`(first key, page id)`, at least one) until one
    /// page remains; returns the root page id.
    fn build_tree(&mut self, mut level: Vec<(Vec<u8>, u64)>) -> Result<u64, ImportError> {
        while level.len() > 1 {
            let mut next_level = Vec::new();
            let mut group: Vec<usize> = Vec::new();
            let mut size = PAGE_HEADER;
            let flush = |w: &mut Self,
                         group: &mut Vec<usize>,
                         next_level: &mut Vec<(Vec<u8>, u64)>|
             -> Result<(), ImportError> {
                let elems: Vec<(u32, &[u8], &[u8], u64)> = group
                    .iter()
                    .map(|&i| (0, level[i].0.as_slice(), &[][..], level[i].1))
                    .collect();
                let id = w.write_page(FLAG_BRANCH, &elems)?;
                next_level.push((level[group[0]].0.clone(), id));
                group.clear();
                Ok(())
            };
            for (i, (first_key, _)) in level.iter().enumerate() {
                let elem = ELEMENT + first_key.len();
                // At least two children per branch page, so every level shrinks.
                if group.len() >= 2
                    && (size + elem > self.page_size || group.len() == usize::from(u16::MAX))
                {
                    flush(self, &mut group, &mut next_level)?;
                    size = PAGE_HEADER;
                }
                group.push(i);
                size += elem;
            }
            flush(self, &mut group, &mut next_level)?;
            level = next_level;
        }
        level
            .first()
            .map(|(_, id)| *id)
            .ok_or_else(|| werr("a tree without pages"))
    }

    /// Writes the root bucket, the freelist and both meta pages (transaction `txid`, at least
    /// 1) and returns the output, positioned at its end.
    pub fn finish(mut self, txid: u64) -> Result<W, ImportError> {
        if txid == 0 {
            return Err(werr("transaction id 0"));
        }
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        if let Some(w) = buckets.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(werr(format!(
                "bucket {} written twice",
                String::from_utf8_lossy(&w[0].0)
            )));
        }
        let root = {
            let mut b = self.bucket(b"");
            for (name, page) in &buckets {
                let mut header = [0u8; 16];
                header[..8].copy_from_slice(&page.to_le_bytes());
                b.push(BUCKET_LEAF_FLAG, name, &header)?;
            }
            b.finish_tree()?
        };
        let high_water = self.next;
        let ps = self.page_size;
        let mut head = vec![0u8; ps * FIRST_DATA_PAGE as usize];
        for page in 0..2u64 {
            let this_txid = if page == txid % 2 { txid } else { txid - 1 };
            let p = &mut head[page as usize * ps..];
            p[0..8].copy_from_slice(&page.to_le_bytes());
            p[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
            let m = &mut p[PAGE_HEADER..PAGE_HEADER + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
            // flags (12..16) 0; root bucket: root page, sequence 0.
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&this_txid.to_le_bytes());
            let sum = fnv64a(&m[..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
        }
        let f = &mut head[FREELIST_PAGE as usize * ps..];
        f[0..8].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
        f[8..10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
        let end = high_water * ps as u64;
        self.out
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.out.write_all(&head))
            .and_then(|_| self.out.seek(SeekFrom::Start(end)))
            .and_then(|_| self.out.flush())
            .map_err(|e| self.io(e))?;
        Ok(self.out)
    }
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds `key` → `value`. Keys must be non-empty, strictly ascending, at most
    /// [`MAX_KEY_SIZE`] bytes; values at most [`MAX_VALUE_SIZE`].
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ImportError> {
        self.push(0, key, value)
    }

    fn push(&mut self, flags: u32, key: &[u8], value: &[u8]) -> Result<(), ImportError> {
        let name = String::from_utf8_lossy(&self.name).into_owned();
        if key.is_empty() || key.len() > MAX_KEY_SIZE {
            return Err(werr(format!(
                "bucket {name}: key of {} bytes (1..={MAX_KEY_SIZE} allowed)",
                key.len()
            )));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(werr(format!(
                "bucket {name}: value of {} bytes (at most {MAX_VALUE_SIZE})",
                value.len()
            )));
        }
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(werr(format!("bucket {name}: keys not strictly ascending")));
        }
        let elem = ELEMENT + key.len() + value.len();
        if !self.pending.is_empty()
            && (self.size + elem > self.w.page_size || self.pending.len() == usize::from(u16::MAX))
        {
            self.flush_leaf()?;
        }
        self.pending.push(Pending {
            flags,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        self.size += elem;
        self.last = Some(key.to_vec());
        self.count += 1;
        Ok(())
    }

    fn flush_leaf(&mut self) -> Result<(), ImportError> {
        let elems: Vec<(u32, &[u8], &[u8], u64)> = self
            .pending
            .iter()
            .map(|p| (p.flags, p.key.as_slice(), p.value.as_slice(), 0))
            .collect();
        let id = self.w.write_page(FLAG_LEAF, &elems)?;
        let first = self
            .pending
            .first()
            .map(|p| p.key.clone())
            .unwrap_or_default();
        self.leaves.push((first, id));
        self.pending.clear();
        self.size = PAGE_HEADER;
        Ok(())
    }

    fn finish_tree(mut self) -> Result<u64, ImportError> {
        if !self.pending.is_empty() || self.leaves.is_empty() {
            self.flush_leaf()?;
        }
        let leaves = std::mem::take(&mut self.leaves);
        self.w.build_tree(leaves)
    }

    /// Writes the last leaf and the branch pages; returns the number of pairs written.
    pub fn finish(mut self) -> Result<u64, ImportError> {
        if !self.pending.is_empty() || self.leaves.is_empty() {
            self.flush_leaf()?;
        }
        let leaves = std::mem::take(&mut self.leaves);
        let root = self.w.build_tree(leaves)?;
        let name = std::mem::take(&mut self.name);
        self.w.buckets.push((name, root));
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::bbolt::BoltFile;

    fn build(page_size: u32, f: impl FnOnce(&mut BoltWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut w = BoltWriter::new(Cursor::new(Vec::new()), page_size, "mem").unwrap();
        f(&mut w);
        w.finish(1).unwrap().into_inner()
    }

    #[test]
    fn empty_buckets_exact_layout() {
        let data = build(4096, |w| {
            w.bucket(b"b").finish().unwrap();
            w.bucket(b"a").finish().unwrap();
        });
        // meta 0, meta 1, freelist, leaf of b, leaf of a, root leaf.
        assert_eq!(data.len(), 6 * 4096);
        let f = BoltFile::open(&data).unwrap();
        let m = f.meta();
        assert_eq!(
            (m.page, m.root, m.freelist, m.pgid, m.txid),
            (1, 5, 2, 6, 1)
        );
        // Page 0 holds txid 0 (bbolt writes txid t to page t % 2).
        assert_eq!(&data[16 + 48..16 + 56], &0u64.to_le_bytes());
        // Freelist page: id 2, flags 0x10, count 0.
        assert_eq!(
            &data[8192..8208],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]
        );
        let root = f.root_entries().unwrap();
        let names: Vec<&[u8]> = root.iter().map(|e| e.key).collect();
        assert_eq!(names, vec![&b"a"[..], b"b"]);
        assert!(root.iter().all(|e| e.is_bucket));
        // a's root is page 4, b's page 3, sequence 0.
        assert_eq!(
            root[0].value,
            &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(f.bucket(b"a").unwrap().unwrap(), vec![]);
    }

    #[test]
    fn leaves_branches_and_overflow_round_trip() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
            .map(|i| {
                let v = if i == 777 {
                    vec![7u8; 3 * 512 + 100]
                } else {
                    format!("value {i}").into_bytes()
                };
                (format!("key/{i:05}").into_bytes(), v)
            })
            .collect();
        // 512-byte pages: many leaves, two branch levels, an overflow page.
        let data = build(512, |w| {
            let mut b = w.bucket(b"kv");
            for (k, v) in &pairs {
                b.put(k, v).unwrap();
            }
            assert_eq!(b.finish().unwrap(), 2000);
        });
        let f = BoltFile::open(&data).unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = f
            .bucket(b"kv")
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| (e.key.to_vec(), e.value.to_vec()))
            .collect();
        assert_eq!(got, pairs);
        let status = crate::status::etcd_status(&data).unwrap();
        assert_eq!(status.total_key, 2000);
        assert_eq!(status.total_size, data.len() as u64);
    }

    #[test]
    fn refuses_what_bbolt_cannot_store() {
        let mut w = BoltWriter::new(Cursor::new(Vec::new()), 4096, "mem").unwrap();
        let mut b = w.bucket(b"x");
        b.put(b"b", b"").unwrap();
        let e = b.put(b"a", b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bbolt writer: bucket x: keys not strictly ascending"
        );
        let e = b.put(b"b", b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bbolt writer: bucket x: keys not strictly ascending"
        );
        let e = b.put(b"", b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bbolt writer: bucket x: key of 0 bytes (1..=32768 allowed)"
        );
        let e = b.put(&vec![b'z'; MAX_KEY_SIZE + 1], b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bbolt writer: bucket x: key of 32769 bytes (1..=32768 allowed)"
        );
        b.finish().unwrap();
        w.bucket(b"x").finish().unwrap();
        assert_eq!(
            w.finish(1).unwrap_err().to_string(),
            "bbolt writer: bucket x written twice"
        );
        assert_eq!(
            BoltWriter::new(Cursor::new(Vec::new()), 1000, "mem")
                .unwrap_err()
                .to_string(),
            "bbolt writer: page size 1000 is not a power of two in 512..=1 MiB"
        );
    }
}
