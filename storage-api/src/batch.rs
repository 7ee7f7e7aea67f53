//! Atomic multi-tree write batches.

use crate::tree::Tree;

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or overwrite `key` in `tree`.
    Put {
        /// Target tree.
        tree: Tree,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key` from `tree` (no error if absent).
    Delete {
        /// Target tree.
        tree: Tree,
        /// Key bytes.
        key: Vec<u8>,
    },
}

impl WriteOp {
    /// The tree this operation touches.
    pub fn tree(&self) -> Tree {
        match self {
            WriteOp::Put { tree, .. } | WriteOp::Delete { tree, .. } => *tree,
        }
    }

    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => key,
        }
    }
}

/// An ordered list of puts and deletes over any trees, applied by
/// [`Backend::write`](crate::Backend::write) in one atomic commit: after a crash or an
/// error either every operation is visible or none is. Later operations on the same
/// key win over earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` operations.
    pub fn with_capacity(n: usize) -> Self {
        WriteBatch {
            ops: Vec::with_capacity(n),
        }
    }

    /// Appends a put.
    pub fn put(
        &mut self,
        tree: Tree,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.ops.push(WriteOp::Put {
            tree,
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Appends a delete.
    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete {
            tree,
            key: key.into(),
        });
        self
    }

    /// The operations in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Consumes the batch into its operations.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Total key and value bytes in the batch.
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
            })
            .sum()
    }
}

impl From<Vec<WriteOp>> for WriteBatch {
    fn from(ops: Vec<WriteOp>) -> Self {
        WriteBatch { ops }
    }
}
