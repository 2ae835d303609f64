//! Merkle trees over a segment's rows, so that single rows can be proven to be in a segment
//! the hash chain commits to (evidence bundles).
//!
//! The tree is RFC 9162's (Certificate Transparency v2, §2.1): leaf hash `SHA-256(0x00 ‖ leaf)`,
//! node hash `SHA-256(0x01 ‖ left ‖ right)`, the left subtree of `n` leaves holding the largest
//! power of two below `n`. Proofs are its inclusion proofs and are checked by its algorithm
//! (§2.1.3.2), so a third party can check them with any RFC 9162 implementation.
//!
//! A row's leaf is its NDJSON line as arrow's JSON writer writes it, nulls explicit: the line
//! an evidence bundle carries, so checking a bundle hashes exactly what it shows.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::{LineDelimitedWriter, WriterBuilder};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf's bytes.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of a tree without leaves (RFC 9162: the hash of the empty string).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Each row of `batch` as its leaf: one NDJSON line (without the newline).
pub fn row_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(batch.num_rows() * 256);
    encode(batch, &mut out)?;
    let mut lines: Vec<Vec<u8>> = out.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    // The writer ends every line with a newline: the last piece is empty.
    lines.pop();
    debug_assert_eq!(lines.len(), batch.num_rows());
    Ok(lines)
}

/// Appends the rows of `batch` to `out` as NDJSON, one line each, nulls explicit.
fn encode(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    let mut writer: LineDelimitedWriter<&mut Vec<u8>> =
        WriterBuilder::new().with_explicit_nulls(true).build(out);
    writer.write(batch)?;
    writer.finish()?;
    Ok(())
}

/// A tree's root computed leaf by leaf in O(log n) memory: the perfect subtrees of the leaves
/// so far, largest first (as the bits of the count).
#[derive(Debug, Default, Clone)]
pub struct RootBuilder {
    stack: Vec<(u64, Hash)>,
    leaves: u64,
    /// The NDJSON of the rows being hashed, reused (a flush's chunk is an hour of rows).
    json: Vec<u8>,
}

/// Rows encoded at a time by [`RootBuilder::push_rows`]: its buffer stays a few MiB.
const ROWS_PER_ENCODE: usize = 1024;

impl RootBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next leaf, by its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (1u64, leaf);
        while let Some(&(size, left)) = self.stack.last() {
            if size != node.0 {
                break;
            }
            self.stack.pop();
            node = (size * 2, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.leaves += 1;
    }

    /// Adds every row of `batch`: the leaves [`row_lines`] gives, hashed in place.
    pub fn push_rows(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut json = std::mem::take(&mut self.json);
        for start in (0..batch.num_rows()).step_by(ROWS_PER_ENCODE) {
            let rows = batch.slice(start, ROWS_PER_ENCODE.min(batch.num_rows() - start));
            json.clear();
            encode(&rows, &mut json)?;
            // Every line ends with a newline: the piece after the last is empty.
            for line in json.split(|&b| b == b'\n').take(rows.num_rows()) {
                self.push(leaf_hash(line));
            }
        }
        self.json = json;
        Ok(())
    }

    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    /// The root: the perfect subtrees joined from the right, as RFC 9162 splits.
    pub fn root(&self) -> Hash {
        let mut nodes = self.stack.iter().rev();
        let Some(&(_, mut acc)) = nodes.next() else {
            return empty_root();
        };
        for (_, left) in nodes {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// The root over `leaves` (leaf hashes).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The inclusion proof of leaf `index` among `leaves`: the sibling hashes from the leaf up.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    assert!(index < leaves.len(), "leaf {index} of {}", leaves.len());
    let mut path = Vec::new();
    proof_into(leaves, index, &mut path);
    path
}

fn proof_into(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        proof_into(&leaves[..k], index, path);
        path.push(root(&leaves[k..]));
    } else {
        proof_into(&leaves[k..], index - k, path);
        path.push(root(&leaves[..k]));
    }
}

/// Whether `path` proves leaf hash `leaf` at `index` of a tree of `size` leaves with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn matches_rfc_9162_shapes() {
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        assert_eq!(root(&[]), empty_root());
        assert_eq!(root(&l[..1]), l[0]);
    }

    #[test]
    fn rows_hash_to_the_leaves_of_their_lines_across_encoding_slices() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let n = ROWS_PER_ENCODE * 2 + 7;
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("raw", DataType::Utf8, true),
        ]);
        let ids = Int64Array::from_iter_values(0..n as i64);
        let raw: StringArray = (0..n)
            .map(|i| (i % 3 != 0).then(|| format!("{{\"line\":\"a\\n{i}\"}}")))
            .collect();
        let batch =
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids), Arc::new(raw)]).unwrap();
        let lines = row_lines(&batch).unwrap();
        assert_eq!(lines.len(), n);
        let mut b = RootBuilder::new();
        b.push_rows(&batch).unwrap();
        let leaves: Vec<Hash> = lines.iter().map(|l| leaf_hash(l)).collect();
        assert_eq!(b.leaves(), n as u64);
        assert_eq!(b.root(), root(&leaves));
    }

    proptest! {
        #[test]
        fn streaming_root_equals_recursive_root(n in 0usize..300) {
            let l = leaves(n);
            let mut b = RootBuilder::new();
            for h in &l {
                b.push(*h);
            }
            prop_assert_eq!(b.root(), root(&l));
        }

        #[test]
        fn every_leaf_proves_and_no_other(n in 1usize..130, seed in 0usize..1000) {
            let l = leaves(n);
            let r = root(&l);
            let i = seed % n;
            let path = inclusion_proof(&l, i);
            prop_assert!(verify_inclusion(&l[i], i as u64, n as u64, &path, &r));
            let other = leaf_hash(b"not a row");
            prop_assert!(!verify_inclusion(&other, i as u64, n as u64, &path, &r));
            if n > 1 {
                let j = (i + 1) % n;
                prop_assert!(!verify_inclusion(&l[i], j as u64, n as u64, &path, &r));
            }
            // (The size is not bound by the path for every size: RFC 9162 takes it from the
            // signed tree head, here the chain entry's row count.)
            prop_assert!(n == 1 || !verify_inclusion(&l[i], i as u64, n as u64, &path[1..], &r));
        }
    }
}
