//! FNV-1a hashing, for answers that must be the same on every platform and release (the offline model's response
//! ids and reasoning signatures, the offline weather tool).

/// FNV-1a, fed piece by piece: stable across platforms and releases, unlike std's hashers, so that the offline
/// model's (and the offline tools') answers are the same everywhere.
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: impl IntoIterator<Item = u8>) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(bytes.iter().copied());
    hash.finish()
}
