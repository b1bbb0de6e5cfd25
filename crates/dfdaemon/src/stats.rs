//! Counters of this node's upload server, kept by the upload server and reported by the
//! scheduler client (below both, so neither depends on the other).

/// What this node's upload server has done, as announced to the schedulers (the evaluator
/// prefers parents with free upload slots and few failed uploads).
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Pieces being sent right now.
    pub in_flight: std::sync::atomic::AtomicU32,
    /// Pieces sent completely since the start.
    pub pieces: std::sync::atomic::AtomicU64,
    /// Piece sends that broke off since the start.
    pub failed: std::sync::atomic::AtomicU64,
    /// Piece bytes sent since the start.
    pub bytes: std::sync::atomic::AtomicU64,
}
