//! A webhook's state: its status, its health record and where that record is
//! kept (shared data, typed).

pub mod delta;
pub mod health;
pub mod store;
