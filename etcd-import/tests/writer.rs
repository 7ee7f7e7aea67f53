//! The bbolt writer against the crate's reader: random buckets, keys and values (empty, small,
//! larger than a page) at every page size round-trip exactly.

use std::collections::BTreeMap;
use std::io::Cursor;

use etcd_import::bbolt::BoltFile;
use etcd_import::bbolt_write::BoltWriter;
use etcd_import::etcd_status;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(any::<u8>(), 500..5000),
    ]
}

fn bucket() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
    proptest::collection::btree_map(
        proptest::collection::vec(any::<u8>(), 1..24),
        value(),
        0..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn written_files_read_back(
        buckets in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..12), bucket(), 1..5),
        shift in 9u32..=13,
        txid in 1u64..1000,
    ) {
        let page_size = 1u32 << shift;
        let mut w = BoltWriter::new(Cursor::new(Vec::new()), page_size, "mem").unwrap();
        // Buckets in any order: the root bucket is sorted by the writer.
        for (name, pairs) in buckets.iter().rev() {
            let mut b = w.bucket(name);
            for (k, v) in pairs {
                b.put(k, v).unwrap();
            }
            prop_assert_eq!(b.finish().unwrap(), pairs.len() as u64);
        }
        let pages = w.pages();
        let data = w.finish(txid).unwrap().into_inner();
        prop_assert_eq!(data.len() as u64, (pages + 1) * u64::from(page_size));
        let f = BoltFile::open(&data).unwrap();
        prop_assert_eq!(f.meta().txid, txid);
        prop_assert_eq!(f.meta().page, txid % 2);
        let names: Vec<Vec<u8>> = f.root_entries().unwrap().iter().map(|e| e.key.to_vec()).collect();
        prop_assert_eq!(names, buckets.keys().cloned().collect::<Vec<_>>());
        let mut total = 0u64;
        for (name, pairs) in &buckets {
            let got: BTreeMap<Vec<u8>, Vec<u8>> = f
                .bucket(name)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|e| (e.key.to_vec(), e.value.to_vec()))
                .collect();
            prop_assert_eq!(&got, pairs);
            total += pairs.len() as u64;
        }
        let st = etcd_status(&data).unwrap();
        prop_assert_eq!((st.total_key, st.total_size), (total, data.len() as u64));
    }
}
