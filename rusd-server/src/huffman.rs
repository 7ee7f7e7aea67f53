//! HPACK's Huffman code (RFC 7541 5.2, Appendix B): a decoder over a binary trie built at
//! compile time, for [`crate::h2fix`]. `loona-hpack`'s decoder looks every bit up in a hash
//! map of hash maps (two lookups per bit), which made it the largest single user-space entry
//! of the server's profile (2.1 % of the samples of a 3-member run); here each bit is one
//! array index.

/// RFC 7541 Appendix B: the code (right-aligned) and its length in bits of octets 0-255 and
/// of EOS (256).
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// A trie child that is a leaf: the symbol is in the low bits.
const LEAF: u16 = 0x8000;
/// The EOS symbol.
const EOS: u16 = 256;

/// The decoding trie: node `n`'s children for bit 0 and bit 1, each an inner node's index or
/// [`LEAF`] | symbol. Node 0 is the root. The code is complete (257 leaves), so there are
/// exactly 256 inner nodes and every child is set; a code that did not fit would fail the
/// build (index out of bounds in const evaluation).
const TRIE: [[u16; 2]; 256] = build();

const fn build() -> [[u16; 2]; 256] {
    let mut nodes = [[0u16; 2]; 256];
    let mut used = 1usize;
    let mut sym = 0usize;
    while sym < CODES.len() {
        let (code, len) = CODES[sym];
        let mut node = 0usize;
        let mut bit = len as u32;
        while bit > 1 {
            bit -= 1;
            let b = ((code >> bit) & 1) as usize;
            if nodes[node][b] == 0 {
                nodes[node][b] = used as u16;
                used += 1;
            }
            node = nodes[node][b] as usize;
        }
        nodes[node][(code & 1) as usize] = LEAF | sym as u16;
        sym += 1;
    }
    nodes
}

/// A Huffman-coded string that is not valid: it contains EOS, or its padding is longer than
/// 7 bits or not the EOS prefix (all ones) — RFC 7541 5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadHuffman;

/// Decodes the Huffman-coded string `coded`.
pub(crate) fn decode(coded: &[u8]) -> Result<Vec<u8>, BadHuffman> {
    let mut out = Vec::with_capacity(coded.len() * 8 / 5 + 1);
    let mut node = 0usize;
    // Bits read since the last symbol, and whether they were all ones.
    let mut depth = 0u32;
    let mut ones = true;
    for &byte in coded {
        for shift in (0..8).rev() {
            let b = (byte >> shift) & 1;
            let child = TRIE[node][usize::from(b)];
            if child & LEAF != 0 {
                let sym = child & !LEAF;
                if sym == EOS {
                    return Err(BadHuffman);
                }
                out.push(sym as u8);
                node = 0;
                depth = 0;
                ones = true;
            } else {
                node = usize::from(child);
                depth += 1;
                ones &= b == 1;
            }
        }
    }
    if depth > 7 || !ones {
        return Err(BadHuffman);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's encoder: `raw` coded and padded with ones.
    fn encode(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &o in raw {
            let (code, len) = CODES[usize::from(o)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    /// A deterministic xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn decodes_the_rfc_examples_and_refuses_eos_and_bad_padding() {
        // RFC 7541 C.4.1 and C.4.2.
        let www: &[u8] = &[
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(decode(www).unwrap(), b"www.example.com");
        assert_eq!(
            decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).unwrap(),
            b"no-cache"
        );
        assert_eq!(decode(&[]).unwrap(), b"");
        // Padding of zeros, padding of 8 ones, and EOS itself (30 ones) are refused.
        assert_eq!(decode(&[0x00]), Err(BadHuffman));
        assert_eq!(decode(&[0xff]), Err(BadHuffman));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xfc]), Err(BadHuffman));
        // '0' (00000, 5 bits) then 3 ones: valid; then 2 ones and a zero: not EOS's prefix.
        assert_eq!(decode(&[0x07]).unwrap(), b"0");
        assert_eq!(decode(&[0x06]), Err(BadHuffman));
    }

    /// Every octet, strings of random octets, and random (mostly invalid) codes: the same
    /// answer as `loona-hpack`'s decoder, the reference.
    #[test]
    fn agrees_with_loona_hpack_on_valid_and_random_input() {
        let mut reference = loona_hpack::huffman::HuffmanDecoder::new();
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let len = (rng.next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let coded = encode(&bytes);
            assert_eq!(decode(&coded), Ok(bytes.clone()), "case {case}");
            assert_eq!(reference.decode(&coded).ok(), Some(bytes), "case {case}");
            // Random octets as a code: valid or not, both decoders answer alike.
            let random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert_eq!(
                decode(&random).ok(),
                reference.decode(&random).ok(),
                "case {case}: {random:x?}"
            );
        }
    }
}
