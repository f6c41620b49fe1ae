//! Who a caller is: a tenant and a role, proven by a bearer token (issue 13). Each run belongs to the tenant that
//! started it, and no caller reaches another tenant's runs. The gRPC layer reads the `authorization` metadata and
//! asks an [`Auth`] who sent it; nothing here knows gRPC, and nothing here reads a file or a variable (the binary
//! reads the tokens file and hands the table in, again on SIGHUP).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

/// The tenant of a server without authentication: every run belongs to it.
pub const DEFAULT_TENANT: &str = "";

/// The shortest token accepted: a guessable token is no lock.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest tenant name: it is stored with every run.
pub const MAX_TENANT_LEN: usize = 64;

/// What a caller may do within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: start, resume and cancel runs, register definitions, connect workers, and read.
    ReadWrite,
    /// Observe and read runs and definitions; not start, resume or cancel runs, register, or connect workers.
    ReadOnly,
}

impl Role {
    /// Its name in a tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
        }
    }
}

/// An authenticated caller: the tenant whose runs it reaches, and its role there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    tenant: Arc<str>,
    role: Role,
}

impl Caller {
    /// A caller of `tenant` with `role`.
    pub fn new(tenant: impl Into<Arc<str>>, role: Role) -> Self {
        Self { tenant: tenant.into(), role }
    }

    /// Whoever calls a server without authentication: the default tenant, every right.
    pub fn anonymous() -> Self {
        Self::new(DEFAULT_TENANT, Role::ReadWrite)
    }

    /// The tenant.
    pub fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether it may change things (start, resume, cancel, register, connect a worker).
    pub fn can_write(&self) -> bool {
        self.role == Role::ReadWrite
    }
}

/// Why a caller was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error(
        "this server requires a token: send the metadata `authorization: Bearer <token>` (grpcurl -H \
         'authorization: Bearer <token>'; runstream --token <token>)"
    )]
    Missing,
    /// `authorization` is not `Bearer <token>`.
    #[error("the `authorization` metadata must be `Bearer <token>` (one space, then the token)")]
    Malformed,
    /// A token this server does not know.
    #[error("the bearer token is not valid on this server; ask its operator for one")]
    Unknown,
}

/// A tokens file: one `TOKEN TENANT [ROLE]` per line (ROLE `read-write`, the default, or `read-only`); blank lines
/// and lines starting with `#` are skipped.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_token: HashMap<String, Caller>,
}

/// A line of a tokens file that cannot be used (its 1-based number and what is wrong; never the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct TokenFileError {
    /// The line.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

impl TokenTable {
    /// Reads a tokens file's text.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut by_token = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let fail = |problem: String| TokenFileError { line: index + 1, problem };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (token, tenant, role) = match fields.as_slice() {
                [token, tenant] => (*token, *tenant, Role::ReadWrite),
                [token, tenant, role] => (*token, *tenant, parse_role(role).map_err(fail)?),
                _ => return Err(fail(format!("expected `TOKEN TENANT [ROLE]`, found {} fields", fields.len()))),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(fail(format!(
                    "the token is {} characters; use at least {MIN_TOKEN_LEN} random ones (e.g. `openssl rand -hex \
                     24`)",
                    token.len()
                )));
            }
            check_tenant(tenant).map_err(fail)?;
            if by_token.insert(token.to_owned(), Caller::new(tenant, role)).is_some() {
                return Err(fail("this token is listed twice; a token names one tenant and role".to_owned()));
            }
        }
        Ok(Self { by_token })
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "read-write" => Ok(Role::ReadWrite),
        "read-only" => Ok(Role::ReadOnly),
        other => Err(format!("unknown role '{other}'; write read-write (the default) or read-only")),
    }
}

/// A tenant name: 1 to 64 characters of letters, digits, `.`, `_` and `-`.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_LEN {
        return Err(format!("a tenant name has 1 to {MAX_TENANT_LEN} characters"));
    }
    if let Some(bad) = tenant.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("the tenant name '{tenant}' has {bad:?}; use letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// How a server tells who calls it. Cheap to clone; a clone shares the tokens (replaced on reload).
#[derive(Debug, Clone)]
pub struct Auth {
    tokens: Option<Arc<RwLock<Arc<TokenTable>>>>,
}

impl Default for Auth {
    fn default() -> Self {
        Self::none()
    }
}

impl Auth {
    /// No authentication: every caller is [`Caller::anonymous`]. For loopback, or behind a proxy that authenticates.
    pub fn none() -> Self {
        Self { tokens: None }
    }

    /// Bearer tokens from a table (see [`TokenTable`]).
    pub fn tokens(table: TokenTable) -> Self {
        Self { tokens: Some(Arc::new(RwLock::new(Arc::new(table)))) }
    }

    /// Whether callers must prove who they are.
    pub fn is_required(&self) -> bool {
        self.tokens.is_some()
    }

    /// Replaces the tokens (a tokens file read again); calls in progress keep the caller they were given. Returns
    /// false, changing nothing, on a server without token authentication.
    pub fn replace_tokens(&self, table: TokenTable) -> bool {
        let Some(tokens) = &self.tokens else { return false };
        *tokens.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
        true
    }

    /// Who sent `authorization` (the metadata's value, if any).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let Some(tokens) = &self.tokens else { return Ok(Caller::anonymous()) };
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .and_then(|token| std::str::from_utf8(token).ok())
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::Malformed)?;
        let table = Arc::clone(&tokens.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        table.by_token.get(token).cloned().ok_or(AuthError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef-one";
    const T2: &str = "0123456789abcdef-two";

    #[test]
    fn a_tokens_file_names_tenants_and_roles() {
        let table = TokenTable::parse(&format!("# ops\n\n{T1} acme\n  {T2} globex read-only  \n")).unwrap();
        let auth = Auth::tokens(table);
        let bearer = |token: &str| format!("Bearer {token}").into_bytes();
        assert_eq!(auth.authenticate(Some(&bearer(T1))), Ok(Caller::new("acme", Role::ReadWrite)));
        assert_eq!(auth.authenticate(Some(&bearer(T2))), Ok(Caller::new("globex", Role::ReadOnly)));
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some(T1.as_bytes())), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some(b"Bearer ")), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some(&bearer("0123456789abcdef-three"))), Err(AuthError::Unknown));
        assert!(auth.replace_tokens(TokenTable::parse(&format!("{T2} globex")).unwrap()));
        assert_eq!(auth.authenticate(Some(&bearer(T1))), Err(AuthError::Unknown), "a removed token no longer works");
        assert_eq!(auth.authenticate(Some(&bearer(T2))), Ok(Caller::new("globex", Role::ReadWrite)));
    }

    #[test]
    fn without_authentication_everyone_is_the_default_tenant() {
        let auth = Auth::none();
        assert_eq!(auth.authenticate(None), Ok(Caller::anonymous()));
        assert_eq!(auth.authenticate(Some(b"Bearer whatever")), Ok(Caller::anonymous()));
        assert!(!auth.replace_tokens(TokenTable::default()));
    }

    #[test]
    fn a_bad_line_is_named_without_its_token() {
        let problem = |text: &str| TokenTable::parse(text).unwrap_err().to_string();
        assert_eq!(problem(&format!("# a\n{T1}\n")), "line 2: expected `TOKEN TENANT [ROLE]`, found 1 fields");
        assert!(problem("short acme").starts_with("line 1: the token is 5 characters; use at least 16"));
        assert!(problem(&format!("{T1} acme admin")).contains("unknown role 'admin'"));
        assert!(problem(&format!("{T1} a/b")).contains("the tenant name 'a/b' has '/'"));
        assert!(problem(&format!("{T1} acme\n{T1} globex")).starts_with("line 2: this token is listed twice"));
        assert!(!problem(&format!("{T1} a/b")).contains(T1));
    }
}
