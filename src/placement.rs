//! Which data-plane worker serves a new client connection.
//!
//! Each worker accepts on its own `SO_REUSEPORT` listener, where the kernel puts a connection
//! by a hash of its addresses. With few connections that is the wrong place: spread over two
//! workers, a handful of busy connections keep both awake, and on cores shared with the model
//! server and the load generator the workers and their peers wait for each other's turns
//! (benches/README.md, issue 15, nineteenth pass). One worker serves a few connections
//! faster; past a few dozen, the work needs every worker.
//!
//! So a worker that accepts a connection asks [`place`] where it belongs and hands it over
//! once if that is another worker: the first worker that holds fewer than `fill` connections
//! takes it; when every worker holds `fill`, the one holding the fewest does (ties stay where
//! the kernel put them, so a balanced set moves nothing). nginx gets the first half of this
//! from its shared listener, where the last worker to sleep is the first woken; Envoy's
//! `exact_balance` is the second half.

/// The worker that should serve a new connection, given each worker's open connections,
/// the worker that accepted it and the fill (0: leave it where the kernel put it).
pub fn place(open: &[i64], accepted_by: usize, fill: usize) -> usize {
    if fill == 0 || open.len() < 2 || accepted_by >= open.len() {
        return accepted_by;
    }
    let fill = i64::try_from(fill).unwrap_or(i64::MAX);
    if let Some(first) = open.iter().position(|&n| n < fill) {
        return first;
    }
    let fewest = open.iter().copied().min().unwrap_or(0);
    if open[accepted_by] == fewest {
        return accepted_by;
    }
    open.iter()
        .position(|&n| n == fewest)
        .unwrap_or(accepted_by)
}

#[cfg(test)]
mod tests {
    use super::place;

    /// Opens `n` connections one after another, each accepted by the worker `hash` names,
    /// and returns how many each worker ends with.
    fn open(workers: usize, n: usize, fill: usize, hash: impl Fn(usize) -> usize) -> Vec<i64> {
        let mut open = vec![0; workers];
        for c in 0..n {
            let to = place(&open, hash(c) % workers, fill);
            open[to] += 1;
        }
        open
    }

    #[test]
    fn a_few_connections_share_the_first_worker() {
        assert_eq!(open(2, 8, 16, |c| c), [8, 0]);
        assert_eq!(open(4, 16, 16, |c| c * 7 + 3), [16, 0, 0, 0]);
    }

    #[test]
    fn past_the_fill_the_next_worker_fills_then_all_share_evenly() {
        assert_eq!(open(2, 20, 16, |c| c), [16, 4]);
        assert_eq!(open(2, 64, 16, |c| c), [32, 32]);
        // However unevenly the kernel hashes them.
        assert_eq!(open(2, 64, 16, |_| 1), [32, 32]);
        let three = open(3, 100, 16, |c| c / 3);
        let (most, fewest) = (three.iter().max(), three.iter().min());
        assert_eq!(three.iter().sum::<i64>(), 100);
        assert!(matches!((most, fewest), (Some(34), Some(33))), "{three:?}");
    }

    #[test]
    fn a_connection_stays_where_the_kernel_put_it_unless_another_worker_needs_it() {
        // Balanced: nothing moves.
        assert_eq!(place(&[20, 20], 1, 16), 1);
        assert_eq!(place(&[20, 20], 0, 16), 0);
        // The emptier worker takes it.
        assert_eq!(place(&[20, 18], 0, 16), 1);
        // Connections closed on the first worker: it is filled again first.
        assert_eq!(place(&[3, 16], 1, 16), 0);
    }

    #[test]
    fn a_fill_of_zero_or_a_single_worker_leaves_placement_to_the_kernel() {
        assert_eq!(open(2, 8, 0, |c| c), [4, 4]);
        assert_eq!(place(&[0, 100], 1, 0), 1);
        assert_eq!(place(&[5], 0, 16), 0);
        // A worker index out of range (cannot happen) is left alone rather than panicking.
        assert_eq!(place(&[1, 2], 7, 16), 7);
    }
}
