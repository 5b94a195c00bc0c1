//! Convex's URL rules: which `convex.url` values are accepted, and where a deployment serves
//! its HTTP actions.
//!
//! Pure (no IO); [`crate::config`] uses [`check`] to refuse a bad `convex.url` at load time
//! (naming the key), and [`super::ConvexSink`] uses all three.

/// Accepts `https://…` anywhere and `http://…` only for loopback hosts (`127.0.0.0/8`, `::1`,
/// `localhost`); the URL must be a bare deployment origin (no query or fragment). Refuses, with
/// the fix, the mistakes that would otherwise fail later with the wrong advice: the ingest
/// route itself (`…/ingest`, which would post to `/ingest/ingest`), the Convex dashboard's URL,
/// and a self-hosted backend's API port 3210 (its HTTP actions are on 3211).
///
/// # Errors
/// A message saying what is wrong with the URL and what to write instead.
pub fn check(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {raw}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "must be the deployment URL without query or fragment: {raw}"
        ));
    }
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    if url.path().trim_end_matches('/').ends_with("/ingest") {
        let mut fixed = url.clone();
        let path = url.path().trim_end_matches('/');
        fixed.set_path(&path[..path.len() - "/ingest".len()]);
        return Err(format!(
            "is the deployment URL, without the /ingest route (the daemon adds it): use {}",
            display(&fixed)
        ));
    }
    if host == "dashboard.convex.dev" || host.ends_with(".dashboard.convex.dev") {
        return Err(format!(
            "{raw} is the Convex dashboard; use the deployment URL, https://<deployment>.convex.cloud (`npx convex dashboard` → Settings → URL & Deploy Key, or CONVEX_URL in .env.local)"
        ));
    }
    if is_loopback_host(&url) && url.port() == Some(3210) {
        let mut fixed = url.clone();
        let _ = fixed.set_port(Some(3211));
        return Err(format!(
            "port 3210 is a self-hosted Convex backend's API; its HTTP actions (where /ingest is) are served on 3211: use {}",
            display(&fixed)
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "plain http:// is only allowed to a loopback host (127.0.0.1, ::1, localhost); use https:// for {}",
            url.host_str().unwrap_or("")
        )),
        other => Err(format!("scheme must be https (got {other}): {raw}")),
    }
}

/// True when `url`'s host is a loopback one (`127.0.0.0/8`, `::1`, `localhost`). Requests to it
/// never go through a proxy from the environment (`HTTP_PROXY`, `ALL_PROXY`, …): a proxy for a
/// loopback deployment is never what was meant, and over plain `http://` it would receive the
/// bearer token in clear.
pub fn is_loopback(url: &url::Url) -> bool {
    is_loopback_host(url)
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The HTTP-actions origin of the deployment named by `url` (`convex.url`):
/// `https://<name>.convex.cloud` (the URL `npx convex deploy` prints; the function API) becomes
/// `https://<name>.convex.site`, where Convex serves HTTP actions; any other URL (a
/// `.convex.site` one, a custom domain, a self-hosted backend's HTTP-actions port such as
/// `http://127.0.0.1:3211`) is used as given. Credentials, query and fragment are dropped.
pub fn site_url(url: &url::Url) -> url::Url {
    let mut site = url.clone();
    let _ = site.set_username("");
    let _ = site.set_password(None);
    site.set_query(None);
    site.set_fragment(None);
    if let Some(host) = url.host_str() {
        let lower = host.to_ascii_lowercase();
        if let Some(name) = lower.strip_suffix(".convex.cloud") {
            // A valid host with one label changed stays valid.
            let _ = site.set_host(Some(&format!("{name}.convex.site")));
        }
    }
    site
}

/// The URL the daemon posts batches to: `<site_url>/ingest`.
///
/// # Errors
/// A message when the URL cannot take the route (a URL that cannot be a base).
pub fn ingest_endpoint(url: &url::Url) -> Result<url::Url, String> {
    route(url, super::INGEST_ROUTE)
}

/// The URL `login`, `check-config` and the daemon ask which device a token is:
/// `<site_url>/whoami`.
///
/// # Errors
/// As [`ingest_endpoint`].
pub fn whoami_endpoint(url: &url::Url) -> Result<url::Url, String> {
    route(url, super::whoami::WHOAMI_ROUTE)
}

fn route(url: &url::Url, route: &str) -> Result<url::Url, String> {
    let mut base = site_url(url);
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(route)
        .map_err(|e| format!("cannot derive the {route} url: {e}"))
}

/// `scheme://host[:port][/path]` without credentials, query or trailing slash (for logs and
/// `status`).
pub fn display(url: &url::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path().trim_end_matches('/'));
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        // (url, accepted)
        let table = [
            ("http://127.0.0.1:3211", true),
            ("http://127.1.2.3", true),
            ("http://[::1]:3211", true),
            ("http://localhost:3211", true),
            ("http://LOCALHOST", true),
            ("https://happy-otter-123.convex.cloud", true),
            ("https://telemetry.example.com/convex/", true),
            ("http://happy-otter-123.convex.cloud", false),
            ("http://10.0.0.1:3211", false),
            ("http://localhost.example.com", false),
            ("ftp://x", false),
            ("not a url", false),
            ("https://a.convex.cloud/?x=1", false),
            ("https://a.convex.cloud/#f", false),
        ];
        for (url, ok) in table {
            assert_eq!(check(url).is_ok(), ok, "{url}");
        }
        let err = check("http://happy-otter-123.convex.cloud").unwrap_err();
        assert!(err.contains("loopback"), "{err}");
    }

    /// The URL mistakes refused with their fix: (convex.url, what the error must say).
    #[test]
    fn url_mistakes_are_refused_with_the_fix() {
        for (url, fix) in [
            ("https://a.convex.site/ingest", "use https://a.convex.site"),
            (
                "https://a.convex.cloud/ingest/",
                "use https://a.convex.cloud",
            ),
            (
                "https://telemetry.example.com/convex/ingest",
                "use https://telemetry.example.com/convex",
            ),
            (
                "https://dashboard.convex.dev/d/happy-otter-123",
                "is the Convex dashboard",
            ),
            ("http://127.0.0.1:3210", "use http://127.0.0.1:3211"),
            ("http://localhost:3210/", "use http://localhost:3211"),
        ] {
            let err = check(url).unwrap_err();
            assert!(err.contains(fix), "{url}: {err}");
        }
        // Not mistakes: the HTTP-actions port, other ports, a path that merely contains "ingest".
        for url in [
            "http://127.0.0.1:3211",
            "http://127.0.0.1:43210",
            "https://a.convex.cloud/ingester",
        ] {
            assert!(check(url).is_ok(), "{url}");
        }
    }

    /// Where batches go: `<HTTP-actions origin>/ingest`.
    #[test]
    fn the_ingest_endpoint_is_the_site_url_plus_ingest() {
        for (url, endpoint) in [
            ("https://a.convex.cloud", "https://a.convex.site/ingest"),
            ("https://a.convex.site/", "https://a.convex.site/ingest"),
            (
                "https://telemetry.example.com/convex",
                "https://telemetry.example.com/convex/ingest",
            ),
            ("http://127.0.0.1:3211", "http://127.0.0.1:3211/ingest"),
        ] {
            let parsed = check(url).unwrap();
            assert_eq!(
                ingest_endpoint(&parsed).unwrap().as_str(),
                endpoint,
                "{url}"
            );
        }
    }

    #[test]
    fn the_http_actions_origin_is_the_convex_site_twin() {
        // (convex.url, site_url shown)
        let table = [
            ("https://a.convex.cloud", "https://a.convex.site"),
            ("https://user:pw@a.convex.cloud/", "https://a.convex.site"),
            (
                "https://Happy-Otter-1.EU-West-1.Convex.Cloud",
                "https://happy-otter-1.eu-west-1.convex.site",
            ),
            ("https://a.convex.site", "https://a.convex.site"),
            (
                "https://telemetry.example.com/convex/",
                "https://telemetry.example.com/convex",
            ),
            (
                "http://127.0.0.1:3211/prefix",
                "http://127.0.0.1:3211/prefix",
            ),
        ];
        for (raw, shown) in table {
            assert_eq!(display(&site_url(&check(raw).unwrap())), shown, "{raw}");
        }
    }
}
