//! The org service: roles on every route, tenancy, invitations, members, sharing,
//! printer security settings and the audit log.

mod audit;
mod authz;
mod invitations;
mod members;
mod sharing;
mod tenancy;
