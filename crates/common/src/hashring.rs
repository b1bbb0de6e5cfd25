//! Rendezvous (highest-random-weight) hashing: which of several nodes owns a key.
//!
//! Every node gets a weight `hash(key, node)`; the owner is the node with the highest weight and
//! the fallbacks follow in decreasing weight. Everyone who knows the same set of nodes agrees on
//! the order, adding a node moves only the keys it wins (about 1/n), and removing one moves only
//! the keys it owned (to their next choice). Used to spread tasks over schedulers and over seed
//! peers.

/// Weight of `node` for `key`: FNV-1a over `key`, a zero byte, then `node`, finished with a
/// 64-bit mixer so that close inputs give unrelated weights.
pub fn weight(key: &str, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain([0u8]).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The node that owns `key` (ties broken by name), or `None` when there are no nodes.
pub fn owner<'a, T: AsRef<str> + ?Sized>(
    key: &str,
    nodes: impl IntoIterator<Item = &'a T>,
) -> Option<&'a T> {
    nodes
        .into_iter()
        .max_by(|a, b| rank_key(key, a.as_ref()).cmp(&rank_key(key, b.as_ref())))
}

/// Indices of `nodes` in the order `key` tries them: owner first, then each fallback.
pub fn ranking<T: AsRef<str>>(key: &str, nodes: &[T]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|a, b| rank_key(key, nodes[*b].as_ref()).cmp(&rank_key(key, nodes[*a].as_ref())));
    order
}

fn rank_key<'a>(key: &str, node: &'a str) -> (u64, &'a str) {
    (weight(key, node), node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8002")).collect()
    }

    #[test]
    fn no_nodes_no_owner() {
        let empty: Vec<String> = Vec::new();
        assert!(owner("t", &empty).is_none());
        assert!(ranking("t", &empty).is_empty());
    }

    #[test]
    fn keys_spread_evenly() {
        let nodes = nodes(4);
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[ranking(&format!("task-{i}"), &nodes)[0]] += 1;
        }
        for c in counts {
            // 10,000 expected each; a fair hash stays well within 10%.
            assert!((9_000..11_000).contains(&c), "uneven spread: {counts:?}");
        }
    }

    proptest! {
        #[test]
        fn order_does_not_depend_on_list_order(key in "[a-f0-9]{1,64}", n in 1usize..9, rot in 0usize..9) {
            let a = nodes(n);
            let mut b = a.clone();
            b.rotate_left(rot % n);
            let ra: Vec<&String> = ranking(&key, &a).into_iter().map(|i| &a[i]).collect();
            let rb: Vec<&String> = ranking(&key, &b).into_iter().map(|i| &b[i]).collect();
            prop_assert_eq!(&ra, &rb);
            prop_assert_eq!(owner(&key, &a), Some(ra[0]));
        }

        #[test]
        fn adding_a_node_moves_keys_only_to_it(key in "[a-f0-9]{1,64}", n in 1usize..9) {
            let before = nodes(n);
            let after = nodes(n + 1);
            let a = owner(&key, &before).cloned();
            let b = owner(&key, &after).cloned();
            prop_assert!(a == b || b.as_deref() == Some(after[n].as_str()));
        }

        #[test]
        fn removing_a_node_moves_only_its_keys_to_their_next_choice(key in "[a-f0-9]{1,64}", n in 2usize..9, gone in 0usize..9) {
            let all = nodes(n);
            let gone = gone % n;
            let order: Vec<String> = ranking(&key, &all).into_iter().map(|i| all[i].clone()).collect();
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, s)| s.clone()).collect();
            let new_owner = owner(&key, &rest).cloned().unwrap();
            if order[0] != all[gone] {
                prop_assert_eq!(&new_owner, &order[0]);
            } else {
                prop_assert_eq!(&new_owner, &order[1]);
            }
        }
    }
}
