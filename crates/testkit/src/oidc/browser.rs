//! The scripted browser: one HTTPS request per connection, a cookie jar, and an HTML
//! form reader good enough for oidc-provider's built-in pages (the device code input and
//! confirmation, login, consent and logout pages).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The bound on one HTTP request to the provider.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// The most pages the browser walks through for one flow.
const MAX_STEPS: usize = 12;

/// What the browser types into forms.
pub(super) struct Fill<'a> {
    pub(super) login: &'a str,
    pub(super) user_code: Option<&'a str>,
}

/// Where a walk through the provider's pages ended.
#[derive(Debug)]
pub enum Walk {
    /// A redirect away from the provider (to the relying party): its `Location`.
    Left(String),
    /// A page with no form (a success page): its HTML.
    Page(String),
}

/// A scripted browser for the provider's built-in pages: a cookie jar, forms filled
/// in (any password), redirects followed while they stay on the provider.
pub struct Browser {
    tls: Arc<transport::tls::ClientConfigHandle>,
    origin: String,
    jar: Vec<Cookie>,
}

#[derive(Debug, Clone)]
struct Cookie {
    name: String,
    value: String,
    path: String,
}

impl Browser {
    /// A browser with an empty cookie jar for the provider at `origin`.
    pub(super) fn new(tls: Arc<transport::tls::ClientConfigHandle>, origin: &str) -> Browser {
        Browser {
            tls,
            origin: origin.to_string(),
            jar: Vec::new(),
        }
    }

    /// See [`super::Provider::authorize`]. A browser that logged in before skips the login.
    pub async fn authorize(&mut self, authorize_url: &str, login: &str) -> anyhow::Result<String> {
        let fill = Fill {
            login,
            user_code: None,
        };
        match self.walk(authorize_url, &fill).await? {
            Walk::Left(location) => Ok(location),
            Walk::Page(page) => bail!("the provider did not redirect back; last page:\n{page}"),
        }
    }

    /// Follows `url` (an end-session URL from a relying party's logout) and confirms
    /// the logout. Where it ended: a redirect to a post-logout URI or the provider's
    /// own page.
    pub async fn end_session(&mut self, url: &str) -> anyhow::Result<Walk> {
        let fill = Fill {
            login: "",
            user_code: None,
        };
        self.walk(url, &fill).await
    }

    /// Walks from `url`: follows redirects on the provider, submits the first form of
    /// each page, stops at a redirect elsewhere or at a page without a form.
    pub(super) async fn walk(&mut self, url: &str, fill: &Fill<'_>) -> anyhow::Result<Walk> {
        let mut method = "GET";
        let mut url = url.to_string();
        let mut body: Option<String> = None;
        for _ in 0..MAX_STEPS {
            let cookies = self.cookie_header(&url);
            let page = https(
                &self.tls,
                method,
                &url,
                body.take(),
                cookies.as_deref(),
                "text/html",
            )
            .await
            .with_context(|| format!("{method} {url}"))?;
            for sc in &page.set_cookies {
                self.store(sc);
            }
            if (300..400).contains(&page.status) {
                let loc = page
                    .location
                    .as_deref()
                    .with_context(|| format!("{method} {url}: redirect without Location"))?;
                let next = resolve(&url, loc);
                if !next.starts_with(&format!("{}/", self.origin)) {
                    return Ok(Walk::Left(next));
                }
                (method, url) = ("GET", next);
                continue;
            }
            if page.status != 200 {
                bail!("{method} {url}: HTTP {}: {}", page.status, page.body);
            }
            if let Some(err) = error_paragraph(&page.body) {
                bail!("{method} {url}: the provider says: {err}");
            }
            let Some(form) = parse_forms(&page.body).into_iter().next() else {
                return Ok(Walk::Page(page.body));
            };
            let fields: Vec<(String, String)> = form
                .fields
                .into_iter()
                .filter(|(k, _)| k != "abort")
                .map(|(k, v)| match k.as_str() {
                    "login" => (k, fill.login.to_string()),
                    "password" => (k, "any".to_string()),
                    "user_code" if v.is_empty() => (k, fill.user_code.unwrap_or_default().to_string()),
                    _ => (k, v),
                })
                .collect();
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let action = if form.action.is_empty() {
                url.clone()
            } else {
                resolve(&url, &form.action)
            };
            if form.method == "get" {
                let sep = if action.contains('?') { '&' } else { '?' };
                (method, url) = ("GET", format!("{action}{sep}{}", form_body(&pairs)));
            } else {
                (method, url, body) = ("POST", action, Some(form_body(&pairs)));
            }
        }
        bail!("no end after {MAX_STEPS} pages")
    }

    fn cookie_header(&self, url: &str) -> Option<String> {
        let path = url_path(url);
        let v: Vec<String> = self
            .jar
            .iter()
            .filter(|c| path.starts_with(&c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!v.is_empty()).then(|| v.join("; "))
    }

    fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.trim().split_once('=')) else {
            return;
        };
        let mut path = "/".to_string();
        let mut expired = value.is_empty();
        for attr in parts {
            let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
            match k.to_ascii_lowercase().as_str() {
                "path" => path = v.to_string(),
                "max-age" if v.trim() == "0" => expired = true,
                "expires" if v.contains("1970") => expired = true,
                _ => {}
            }
        }
        self.jar.retain(|c| !(c.name == name && c.path == path));
        if !expired {
            self.jar.push(Cookie {
                name: name.to_string(),
                value: value.to_string(),
                path,
            });
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub(super) struct Page {
    pub(super) status: u16,
    pub(super) location: Option<String>,
    pub(super) set_cookies: Vec<String>,
    pub(super) body: String,
}

/// One request on a new connection to an `https://` URL, bounded.
pub(super) async fn https(
    tls: &Arc<transport::tls::ClientConfigHandle>,
    method: &str,
    url: &str,
    form: Option<String>,
    cookies: Option<&str>,
    accept: &str,
) -> anyhow::Result<Page> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("not an https URL: {url}");
    }
    let authority = uri.authority().context("no host")?.clone();
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let fut = async {
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        tcp.set_nodelay(true)?;
        let stream = transport::tls::TlsConnector::from(tls.clone())
            .connect(transport::tls::server_name(&host), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority.as_str())
            .header("accept", accept);
        if let Some(c) = cookies {
            req = req.header("cookie", c);
        }
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req.body(Full::new(Bytes::from(form.unwrap_or_default())))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let set_cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(Page {
            status,
            location,
            set_cookies,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(REQUEST_LIMIT, fut)
        .await
        .with_context(|| format!("{method} {url} took more than {REQUEST_LIMIT:?}"))?
}

/// `location` relative to `base` (both on the provider, or `location` absolute).
fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("https://") || location.starts_with("http://") {
        return location.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    let origin = &base[..origin_end];
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = url_path(base);
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{origin}{dir}{location}")
}

/// The path of a URL, without query.
fn url_path(url: &str) -> &str {
    let rest = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

/// `application/x-www-form-urlencoded` (also good for a query string).
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The decoded value of query parameter `name` in `url` (e.g. `code` and `state` in a
/// callback URL).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (urldecode(k) == name).then(|| urldecode(v))
    })
}

fn urldecode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A form of a page: its action, method and the fields a submit sends.
#[derive(Debug, Default)]
struct Form {
    id: Option<String>,
    action: String,
    method: String,
    fields: Vec<(String, String)>,
}

/// The forms of an HTML page, enough for oidc-provider's built-in pages: `<input>`s
/// and named `<button>`s, inside a form or attached to one by `form="ID"`.
fn parse_forms(html: &str) -> Vec<Form> {
    let mut forms: Vec<Form> = Vec::new();
    let mut open: Option<usize> = None;
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let end = tag_end(rest);
        let tag = &rest[..end];
        rest = &rest[end.min(rest.len())..];
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
            .collect::<String>()
            .to_ascii_lowercase();
        let attrs = || parse_attrs(tag);
        let attr = |k: &str| attrs().into_iter().find(|(n, _)| n == k).map(|(_, v)| v);
        match name.as_str() {
            "form" => {
                forms.push(Form {
                    id: attr("id"),
                    action: attr("action").unwrap_or_default(),
                    method: attr("method")
                        .unwrap_or_else(|| "get".into())
                        .to_ascii_lowercase(),
                    fields: Vec::new(),
                });
                open = Some(forms.len() - 1);
            }
            "/form" => open = None,
            "input" | "button" => {
                let Some(field) = attr("name") else { continue };
                if name == "button" && attr("value").is_none() {
                    continue;
                }
                let target = match attr("form") {
                    Some(id) => forms.iter().position(|f| f.id.as_deref() == Some(id.as_str())),
                    None => open,
                };
                if let Some(i) = target {
                    forms[i].fields.push((field, attr("value").unwrap_or_default()));
                }
            }
            _ => {}
        }
    }
    forms
}

/// Where a tag's `>` is, skipping quoted attribute values.
fn tag_end(s: &str) -> usize {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i,
            _ => {}
        }
    }
    s.len()
}

/// `name="value"` pairs of a tag (names lowercased, entities decoded); bare
/// attributes get an empty value.
fn parse_attrs(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut s = tag.trim_start_matches(|c: char| !c.is_whitespace());
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        let name_len = s
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(s.len());
        if name_len == 0 {
            break;
        }
        let name = s[..name_len].to_ascii_lowercase();
        s = s[name_len..].trim_start();
        let mut value = String::new();
        if let Some(after) = s.strip_prefix('=') {
            let after = after.trim_start();
            let (v, rest) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], &body[(close + 1).min(body.len())..])
                }
                _ => {
                    let close = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            value = decode_entities(v);
            s = rest;
        }
        out.push((name, value));
    }
    out
}

fn decode_entities(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The text of the provider's error paragraph (`<p class="red">`), if the page has one.
fn error_paragraph(html: &str) -> Option<String> {
    let start = html.find("<p class=\"red\">")? + "<p class=\"red\">".len();
    let len = html[start..].find("</p>").unwrap_or(html.len() - start);
    Some(html[start..start + len].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_the_device_confirm_page() {
        let html = r#"<form id="op.deviceConfirmForm" method="post" action="https://127.0.0.1:1/device">
<input type="hidden" name="xsrf" value="abc"/>
<input type="hidden" name="user_code" value="WXYZ-ABCD"/>
<input type="hidden" name="confirm" value="yes"/>
</form>
        <button autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
          <button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">[ Abort ]</button>"#;
        let forms = parse_forms(html);
        assert_eq!(forms.len(), 1);
        assert_eq!(forms[0].action, "https://127.0.0.1:1/device");
        assert_eq!(forms[0].method, "post");
        let names: Vec<&str> = forms[0].fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["xsrf", "user_code", "confirm", "abort"]);
    }

    #[test]
    fn a_multi_line_input_and_bare_attributes() {
        let html = "<form id=\"f\" novalidate method=\"post\" action=\"/device\">\n<input\n    type=\"text\" name=\"user_code\" placeholder=\"Enter code\" onfocus=\"this.select(); this.onfocus = undefined;\" autofocus autocomplete=\"off\"></input>\n<input required type=\"password\" name=\"password\" >";
        let forms = parse_forms(html);
        assert_eq!(
            forms[0].fields,
            [
                ("user_code".into(), String::new()),
                ("password".into(), String::new())
            ]
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            resolve("https://h:1/device?x=1", "/interaction/u"),
            "https://h:1/interaction/u"
        );
        assert_eq!(resolve("https://h:1/a/b", "c"), "https://h:1/a/c");
        assert_eq!(resolve("https://h:1/a", "https://o/cb"), "https://o/cb");
        assert_eq!(url_path("https://h:1/a/b?c=/d"), "/a/b");
        assert_eq!(url_path("https://h:1"), "/");
        let url = format!(
            "https://m/cb?{}",
            form_body(&[("code", "a b/c"), ("state", "%x")])
        );
        assert_eq!(query_param(&url, "code").as_deref(), Some("a b/c"));
        assert_eq!(query_param(&url, "state").as_deref(), Some("%x"));
        assert_eq!(query_param(&url, "nope"), None);
    }

    #[test]
    fn cookies_follow_path_and_expiry() {
        let tls =
            transport::tls::client_config(transport::tls::ServerTrust::Record(Default::default()), None, &[])
                .expect("config");
        let mut b = Browser::new(tls, "https://h:1");
        b.store("_session=s1; path=/; samesite=lax; secure; httponly");
        b.store("_interaction=i1; path=/interaction/u1; secure");
        assert_eq!(
            b.cookie_header("https://h:1/device").as_deref(),
            Some("_session=s1")
        );
        assert_eq!(
            b.cookie_header("https://h:1/interaction/u1").as_deref(),
            Some("_session=s1; _interaction=i1")
        );
        b.store("_interaction=; path=/interaction/u1; expires=Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            b.cookie_header("https://h:1/interaction/u1").as_deref(),
            Some("_session=s1")
        );
    }
}
