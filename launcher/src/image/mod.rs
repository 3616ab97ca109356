//! Images read in-process, without mounting: opening SIF or SquashFS files, the read-only
//! `ImageView` the planner walks, and `inspect`.

pub mod inspect;
pub mod open;
pub mod view;

pub use open::Image;
