//! In-process proxy tests (filled below).
