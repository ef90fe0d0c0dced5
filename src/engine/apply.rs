//! Folding applied decisions into the state.
