//! A per-thread stock of emptied header maps, so that a request's and a response's headers do
//! not each cost two allocations (the map's index table and its entries): the HTTP/1.1 server
//! takes one for each request head and gives back the response's once its head is written; the
//! upstream side takes one for each response head and gives back the request's once its head
//! went out. hyper's server kept one map per connection for the same reason.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread: one per request or response in flight is enough to stop allocating.
const STOCK: usize = 64;
/// A map that grew past this many headers is not kept (a rare huge head must not pin memory).
const MAX_CAPACITY: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `capacity` headers.
pub fn take(capacity: usize) -> HeaderMap {
    match MAPS.with(|m| m.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a map back for reuse; its headers are dropped now.
pub fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|m| {
        let mut maps = m.borrow_mut();
        if maps.len() < STOCK {
            maps.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_room() {
        let mut map = take(8);
        map.insert(header::HOST, HeaderValue::from_static("a"));
        map.append(header::ACCEPT, HeaderValue::from_static("b"));
        let room = map.capacity();
        give(map);
        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        assert!(again.get(header::HOST).is_none());
    }

    #[test]
    fn a_map_grown_past_the_limit_is_not_kept() {
        let mut big = HeaderMap::with_capacity(MAX_CAPACITY * 2);
        big.insert(header::HOST, HeaderValue::from_static("a"));
        give(big);
        assert!(take(1).capacity() <= MAX_CAPACITY);
    }
}
