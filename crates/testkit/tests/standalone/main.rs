//! A single member, driven through its real sockets.
//!
//! Numbering: t10 basic behaviour, t20 trust, t30 API edge cases and errors, t40
//! events, t50 durability and lifecycle, t90 adversarial, t95 limits.

mod t10_basic;
mod t20_trust;
mod t30_errors;
mod t35_validation;
mod t40_events;
mod t50_durability;
mod t52_service_manager;
mod t60_proxy_protocol;
mod t62_images;
mod t90_adversarial;
mod t95_limits;
