//! S3's explicit ACL grant headers (`x-amz-grant-read: id="app1", uri="…/AllUsers"`) mapped
//! onto Meridian's grants: a key name (`id`) gets read, write or owner; AllUsers READ is a
//! public-read bucket. What Meridian cannot express is refused with `NotImplemented`.

use meridian_engine::iam::Grants;
use s3s::{S3Result, s3_error};

use super::shared::not_implemented;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// The permission a grant header gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Permission {
    Read,
    Write,
    FullControl,
    ReadAcp,
    WriteAcp,
}

/// The ACL the grant headers ask for: grants by key name, and whether anyone may read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HeaderAcl {
    pub grants: Grants,
    pub public_read: bool,
}

/// Reads the grant headers present (`None`: no grant header at all).
pub(super) fn from_headers(headers: &[(Option<&String>, Permission)]) -> S3Result<Option<HeaderAcl>> {
    if headers.iter().all(|(value, _)| value.is_none()) {
        return Ok(None);
    }
    let mut acl = HeaderAcl::default();
    for (value, permission) in headers {
        let Some(value) = value else { continue };
        for grantee in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let (kind, name) = grantee
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
                .ok_or_else(|| s3_error!(InvalidArgument, "Invalid grantee {grantee:?}: use id=\"KEY-NAME\""))?;
            grant(&mut acl, kind, name, *permission)?;
        }
    }
    Ok(Some(acl))
}

fn grant(acl: &mut HeaderAcl, kind: &str, name: &str, permission: Permission) -> S3Result<()> {
    match (kind, name, permission) {
        (_, _, Permission::ReadAcp | Permission::WriteAcp) => {
            Err(not_implemented("READ_ACP and WRITE_ACP grants (a bucket's ACL is read and changed by its owners)"))
        }
        ("uri", ALL_USERS, Permission::Read) => {
            acl.public_read = true;
            Ok(())
        }
        ("uri", ALL_USERS, _) => Err(not_implemented("anonymous writes (grants to AllUsers other than READ)")),
        ("uri", AUTHENTICATED_USERS, _) => {
            Err(not_implemented("grants to every authenticated key (name each key with id=\"KEY-NAME\")"))
        }
        ("id", name, permission) if !name.is_empty() => {
            let entry = acl.grants.entry(name.to_string()).or_default();
            match permission {
                Permission::Read => entry.read = true,
                Permission::Write => entry.write = true,
                _ => entry.owner = true,
            }
            Ok(())
        }
        ("emailAddress", _, _) => Err(not_implemented("grantees by email address (use id=\"KEY-NAME\")")),
        _ => Err(s3_error!(InvalidArgument, "Invalid grantee {kind}={name:?}: use id=\"KEY-NAME\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_and_all_users_read_map_onto_grants() {
        let read = "id=\"app1\", uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"".to_string();
        let write = "id=app2".to_string();
        let full = "id=\"app3\"".to_string();
        let acl = from_headers(&[
            (Some(&read), Permission::Read),
            (Some(&write), Permission::Write),
            (Some(&full), Permission::FullControl),
        ])
        .unwrap()
        .unwrap();
        assert!(acl.public_read);
        assert!(acl.grants["app1"].read && !acl.grants["app1"].write);
        assert!(acl.grants["app2"].write);
        assert!(acl.grants["app3"].owner);
        assert_eq!(from_headers(&[(None, Permission::Read)]).unwrap(), None);
        let refused = |value: &str, permission| {
            let value = value.to_string();
            from_headers(&[(Some(&value), permission)]).unwrap_err().code().as_str().to_string()
        };
        assert_eq!(
            refused("uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"", Permission::Write),
            "NotImplemented"
        );
        assert_eq!(
            refused("uri=\"http://acs.amazonaws.com/groups/global/AuthenticatedUsers\"", Permission::Read),
            "NotImplemented"
        );
        assert_eq!(refused("emailAddress=\"a@b.c\"", Permission::Read), "NotImplemented");
        assert_eq!(refused("id=\"app1\"", Permission::ReadAcp), "NotImplemented");
        assert_eq!(refused("nonsense", Permission::Read), "InvalidArgument");
    }
}
