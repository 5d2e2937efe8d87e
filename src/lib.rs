pub mod grant;
pub mod keys;
pub mod policy;
pub mod token;
pub mod wire;
