//! A NetBird management API stand-in for the tests and `cargo xtask demo
//! --netbird`: documents served from fixtures (written from NetBird's
//! OpenAPI document, `fixtures/netbird/schema.json`), the token checked,
//! gzip when asked, every request counted, and faults on demand.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::Netns;

/// The fixtures' directory.
pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/netbird")
}

/// Documents by API path (`/api/peers`), from a fixture directory whose
/// files are named by path (`networks_routers.json` is `/api/networks/routers`).
pub fn load_documents(dir: &Path) -> Result<BTreeMap<String, Value>> {
    let mut docs = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        docs.insert(format!("/api/{}", stem.replace('_', "/")), value);
    }
    Ok(docs)
}

/// What the server does instead of answering.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Status(u16),
    /// 429 with this `Retry-After`.
    RateLimited(u64),
    /// A body that is not JSON.
    Malformed,
    /// Answers after this long.
    Slow(Duration),
}

#[derive(Default)]
struct State {
    docs: BTreeMap<String, Value>,
    fault: Option<Fault>,
    requests: Vec<String>,
    gzip_served: u64,
}

/// The server, on the loopback of a namespace (the daemon's), until dropped.
pub struct NetbirdApi {
    pub addr: SocketAddr,
    pub token: String,
    state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
}

impl NetbirdApi {
    /// Serves `docs` on 127.0.0.1 in `ns` (or the caller's namespace).
    pub fn start(ns: Option<&Netns>, docs: BTreeMap<String, Value>) -> Result<Self> {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listener = match ns {
            Some(ns) => ns.enter(bind)??,
            None => bind()?,
        };
        let addr = listener.local_addr()?;
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, None)
                .map_err(|e| anyhow::anyhow!("fixture server: {e}"))?,
        );
        let state = Arc::new(Mutex::new(State {
            docs,
            ..Default::default()
        }));
        let token = format!("nbp_fixture{:016x}", std::process::id() as u64 * 7919);
        // One acceptor (`unblock` on drop wakes exactly one); a thread per
        // request, so a slow answer holds up no other.
        let (acceptor, shared, secret) = (server.clone(), state.clone(), token.clone());
        thread::spawn(move || {
            for request in acceptor.incoming_requests() {
                let state = shared.clone();
                let token = secret.clone();
                thread::spawn(move || answer(request, &state, &token));
            }
        });
        Ok(Self {
            addr,
            token,
            state,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        lock(&self.state).fault = fault;
    }

    /// Changes the document at `path` (`/api/policies`).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut s = lock(&self.state);
        if let Some(doc) = s.docs.get_mut(path) {
            f(doc);
        }
    }

    pub fn set(&self, path: &str, doc: Value) {
        lock(&self.state).docs.insert(path.to_string(), doc);
    }

    pub fn document(&self, path: &str) -> Option<Value> {
        lock(&self.state).docs.get(path).cloned()
    }

    /// Paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    pub fn gzip_served(&self) -> u64 {
        lock(&self.state).gzip_served
    }

    /// Writes the token file (0600) into `dir`.
    pub fn write_token(&self, dir: &Path) -> Result<std::path::PathBuf> {
        let path = dir.join("netbird.token");
        crate::write_secret(&path, &self.token)?;
        Ok(path)
    }
}

impl Drop for NetbirdApi {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn answer(request: tiny_http::Request, state: &Mutex<State>, token: &str) {
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let authorized = request
        .headers()
        .iter()
        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == format!("Token {token}"));
    let gzip = request
        .headers()
        .iter()
        .any(|h| h.field.equiv("Accept-Encoding") && h.value.as_str().contains("gzip"));
    let (fault, doc) = {
        let mut s = lock(state);
        s.requests.push(path.clone());
        (s.fault.clone(), s.docs.get(&path).cloned())
    };
    let json = |code: u16, body: Vec<u8>| {
        tiny_http::Response::from_data(body)
            .with_status_code(code)
            .with_header(header("Content-Type", "application/json"))
    };
    let error = |code: u16, message: &str| {
        json(
            code,
            format!("{{\"message\":\"{message}\",\"code\":{code}}}").into_bytes(),
        )
    };
    let response = match (&fault, doc) {
        (Some(Fault::Slow(d)), _) => {
            thread::sleep(*d);
            error(504, "too slow")
        }
        (Some(Fault::Status(code)), _) => error(*code, "fault"),
        (Some(Fault::RateLimited(secs)), _) => {
            error(429, "rate limited").with_header(header("Retry-After", &secs.to_string()))
        }
        _ if !authorized => error(401, "token invalid"),
        (Some(Fault::Malformed), _) => json(200, b"{\"peers\": [".to_vec()),
        (None, None) => error(404, "not found"),
        (None, Some(doc)) => {
            let body = serde_json::to_vec(&doc).unwrap_or_default();
            if gzip {
                lock(state).gzip_served += 1;
                json(200, gzipped(&body)).with_header(header("Content-Encoding", "gzip"))
            } else {
                json(200, body)
            }
        }
    };
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        tiny_http::Header::from_bytes(&b"X-Bad"[..], &b"1"[..]).expect("static header")
    })
}

fn gzipped(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// Checks `doc`, served at `path`, against the transcribed schema: every
/// required field present, every field one the schema has, of its type.
pub fn check_schema(path: &str, doc: &Value) -> Result<()> {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures_dir().join("schema.json"),
    )?)?;
    let key = path.trim_start_matches("/api/").replace('/', "_");
    let documents = schema["documents"]
        .as_object()
        .context("schema: documents")?;
    let spec = documents
        .iter()
        .find(|(pattern, _)| matches(pattern, &key))
        .map(|(_, s)| s)
        .with_context(|| format!("{path}: no schema for this path"))?;
    check(&schema["schemas"], spec, doc, path)
}

fn matches(pattern: &str, key: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            key.starts_with(head) && key.ends_with(tail) && key.len() > head.len() + tail.len()
        }
        None => pattern == key,
    }
}

fn check(schemas: &Value, spec: &Value, v: &Value, at: &str) -> Result<()> {
    match spec {
        Value::String(t) => {
            let ok = match t.as_str() {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "boolean" => v.is_boolean(),
                "object" => v.is_object(),
                other => bail!("schema: unknown type {other}"),
            };
            if !ok {
                bail!("{at}: expected {t}, found {v}");
            }
        }
        Value::Object(o) if o.contains_key("array") => {
            let items = v
                .as_array()
                .with_context(|| format!("{at}: expected an array, found {v}"))?;
            for (i, item) in items.iter().enumerate() {
                check(schemas, &o["array"], item, &format!("{at}[{i}]"))?;
            }
        }
        Value::Object(o) if o.contains_key("enum") => {
            let allowed = o["enum"].as_array().context("schema: enum")?;
            if !allowed.contains(v) {
                bail!("{at}: {v} is not one of {allowed:?}");
            }
        }
        Value::Object(o) if o.contains_key("integer") => {
            let n = v
                .as_i64()
                .with_context(|| format!("{at}: expected an integer"))?;
            let (lo, hi) = (
                o["integer"][0].as_i64().unwrap_or(0),
                o["integer"][1].as_i64().unwrap_or(0),
            );
            if !(lo..=hi).contains(&n) {
                bail!("{at}: {n} is outside {lo}..={hi}");
            }
        }
        Value::Object(o) if o.contains_key("ref") => {
            let name = o["ref"].as_str().context("schema: ref")?;
            let (props, required) = flatten(schemas, name)?;
            let obj = v
                .as_object()
                .with_context(|| format!("{at}: expected a {name} object"))?;
            for r in &required {
                if !obj.contains_key(r) {
                    bail!("{at}: {name} requires `{r}`");
                }
            }
            for (k, val) in obj {
                let field = props
                    .get(k)
                    .with_context(|| format!("{at}: `{k}` is not a field of {name}"))?;
                check(schemas, field, val, &format!("{at}.{k}"))?;
            }
        }
        other => bail!("schema: cannot read {other}"),
    }
    Ok(())
}

/// A schema's fields and required fields, its `all_of` merged in.
fn flatten(schemas: &Value, name: &str) -> Result<(BTreeMap<String, Value>, Vec<String>)> {
    let s = schemas
        .get(name)
        .with_context(|| format!("schema: no {name}"))?;
    let mut props = BTreeMap::new();
    let mut required = Vec::new();
    for base in s["all_of"].as_array().into_iter().flatten() {
        let (p, r) = flatten(schemas, base.as_str().unwrap_or_default())?;
        props.extend(p);
        required.extend(r);
    }
    for (k, v) in s["properties"].as_object().into_iter().flatten() {
        props.insert(k.clone(), v.clone());
    }
    required.extend(
        s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(String::from)),
    );
    Ok((props, required))
}
