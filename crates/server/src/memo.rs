//! A value computed once per change of what it is made from, not once per request.
//!
//! `GET /1.0` is the most requested document and changes only when the state, this
//! member's local config, its identity, its served certificate or its clustering does.
//! Each of those is an `Arc` that is replaced, never mutated, when it changes, so
//! "nothing changed" is a pointer comparison ([`Same`]). A [`Memo`] keeps the inputs it
//! was made from beside the value: holding them keeps them alive, so a pointer cannot be
//! reused for a different value while it is compared. Readers never wait; two requests
//! that both see a change may both compute, and the later store wins, which is harmless
//! since each request compares with the inputs it loaded itself.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

/// Whether two sets of inputs are the same ones: identity for `Arc`s, not equality.
pub trait Same {
    fn same(&self, other: &Self) -> bool;
}

impl<T> Same for Arc<T> {
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

impl<T> Same for Option<Arc<T>> {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl<A: Same, B: Same> Same for (A, B) {
    fn same(&self, other: &Self) -> bool {
        self.0.same(&other.0) && self.1.same(&other.1)
    }
}

impl Same for bool {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

/// The last value made, with the inputs it was made from.
pub struct Memo<K, V> {
    current: ArcSwapOption<(K, V)>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            current: ArcSwapOption::empty(),
        }
    }
}

impl<K: Same, V> Memo<K, V> {
    /// The value for `inputs`: the kept one when they are the same, else `make`'s.
    pub fn get(&self, inputs: K, make: impl FnOnce(&K) -> V) -> Arc<(K, V)> {
        if let Some(kept) = self.current.load_full() {
            if kept.0.same(&inputs) {
                return kept;
            }
        }
        let value = make(&inputs);
        let made = Arc::new((inputs, value));
        self.current.store(Some(made.clone()));
        made
    }
}

/// Values per caller, at most `N` of them: a new caller beyond that replaces the one
/// kept longest, so many callers cost a computation each, never memory.
pub struct PerCaller<C, V, const N: usize> {
    kept: Mutex<Vec<(C, V)>>,
}

impl<C, V, const N: usize> Default for PerCaller<C, V, N> {
    fn default() -> Self {
        PerCaller {
            kept: Mutex::new(Vec::new()),
        }
    }
}

impl<C: PartialEq, V: Clone, const N: usize> PerCaller<C, V, N> {
    pub fn get(&self, caller: C, make: impl FnOnce() -> V) -> V {
        if let Ok(kept) = self.kept.lock() {
            if let Some((_, v)) = kept.iter().find(|(c, _)| *c == caller) {
                return v.clone();
            }
        }
        let value = make();
        if let Ok(mut kept) = self.kept.lock() {
            if !kept.iter().any(|(c, _)| *c == caller) {
                if kept.len() >= N {
                    kept.remove(0);
                }
                kept.push((caller, value.clone()));
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn made_again_only_when_an_input_is_replaced() {
        let memo: Memo<(Arc<u32>, bool), u32> = Memo::default();
        let made = Cell::new(0);
        let make = |k: &(Arc<u32>, bool)| {
            made.set(made.get() + 1);
            *k.0 + u32::from(k.1)
        };
        let a = Arc::new(1);
        assert_eq!(memo.get((a.clone(), false), make).1, 1);
        assert_eq!(memo.get((a.clone(), false), make).1, 1);
        assert_eq!(made.get(), 1, "same inputs: kept");
        // An equal value in a new Arc is a change (the state was replaced).
        assert_eq!(memo.get((Arc::new(1), false), make).1, 1);
        assert_eq!(made.get(), 2);
        let b = Arc::new(5);
        assert_eq!(memo.get((b.clone(), false), make).1, 5);
        assert_eq!(memo.get((b.clone(), true), make).1, 6);
        assert_eq!(made.get(), 4);
        assert!(Some(b.clone()).same(&Some(b)) && None::<Arc<u8>>.same(&None));
        assert!(!Some(a).same(&None));
    }

    #[test]
    fn per_caller_values_are_bounded() {
        let kept: PerCaller<u32, u32, 2> = PerCaller::default();
        let made = Cell::new(0);
        let get = |c: u32| {
            kept.get(c, || {
                made.set(made.get() + 1);
                c * 10
            })
        };
        assert_eq!((get(1), get(1), get(2)), (10, 10, 20));
        assert_eq!(made.get(), 2);
        get(3); // replaces 1, the one kept longest
        assert_eq!(kept.kept.lock().unwrap().len(), 2);
        assert_eq!(get(2), 20);
        assert_eq!(made.get(), 3);
        assert_eq!(get(1), 10);
        assert_eq!(made.get(), 4);
    }
}
