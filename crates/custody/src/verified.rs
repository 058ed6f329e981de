//! `Verified<T>`: a value whose signature has been checked. Only this crate can build one, so
//! code that acts on a statement takes `Verified<…>` and cannot be handed an unchecked one.

use std::ops::Deref;

/// A value that passed signature verification. Nothing outside this crate can construct it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub(crate) fn new(t: T) -> Self {
        Self(t)
    }

    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Verified<U> {
        Verified(f(self.0))
    }

    /// Gives up the proof of verification.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
