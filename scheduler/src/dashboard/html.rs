//! The dashboard's HTML: one layout, tables, progress bars and sparklines, all rendered on the
//! server. Every string that came from outside (labels, names, messages, log lines) goes
//! through [`escape`].

use std::fmt::Write as _;

/// `text` safe inside HTML elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as a URL path segment (ids are hex or `job-…`, but a page must not trust that).
pub fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
nav{background:#17324d;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
nav a{color:#cfe3ff;text-decoration:none}nav a:hover{color:#fff}nav .right{margin-left:auto;color:#9fb4cc;font-size:12px}
main{padding:16px 20px;max-width:1400px}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:8px}
th,td{border-bottom:1px solid #e3e6eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600;font-size:12px;color:#4a5566}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card span{color:#5b6678;font-size:12px}
.bar{background:#e3e6eb;border-radius:3px;height:10px;width:140px;display:inline-block;vertical-align:middle}
.bar i{display:block;height:10px;border-radius:3px;background:#2f7ed8}
.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}.warn{color:#b26a00}
pre{background:#101820;color:#d8e2ee;padding:10px;overflow:auto;max-height:420px;font-size:12px}
svg.spark{vertical-align:middle}svg.spark polyline{fill:none;stroke:#2f7ed8;stroke-width:1.5}
.muted{color:#7a8496}
form.login{background:#fff;border:1px solid #e3e6eb;padding:20px;max-width:420px}
form.login input{width:100%;padding:6px;margin:8px 0;box-sizing:border-box}
";

/// The live-update script: every 2 s, the page's `<main>` is fetched again (`?fragment=1`)
/// and swapped in; a failed fetch is shown, not thrown.
const LIVE: &str = "
(function(){
  const main = document.getElementById('main');
  const updated = document.getElementById('updated');
  async function refresh() {
    const url = new URL(window.location.href);
    url.searchParams.set('fragment', '1');
    try {
      const response = await fetch(url, {credentials: 'same-origin'});
      if (response.status === 401) { updated.textContent = 'signed out'; return; }
      if (!response.ok) { updated.textContent = 'update failed: ' + response.status; return; }
      main.innerHTML = await response.text();
      updated.textContent = 'updated ' + new Date().toLocaleTimeString();
    } catch (error) {
      updated.textContent = 'head unreachable';
    }
  }
  setInterval(refresh, 2000);
})();
";

/// A whole page: the navigation, `body` in `<main>`, and the live-update script.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content='width=device-width,initial-scale=1'>\
         <link rel=icon href='data:,'><title>Manta · {title}</title><style>{STYLE}</style></head>\
         <body><nav><b>Manta</b><a href='/'>Overview</a><a href='/nodes'>Nodes</a>\
         <a href='/jobs'>Jobs</a><a href='/actors'>Actors</a><a href='/objects'>Objects</a>\
         <a href='/events'>Events</a><a href='/metrics'>Metrics</a>\
         <span class=right id=updated>live</span></nav>\
         <main id=main>{body}</main><script>{LIVE}</script></body></html>",
        title = escape(title),
    )
}

/// A page with no navigation or live updates (the login form).
pub fn plain_page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><link rel=icon href='data:,'>\
         <title>Manta · {title}</title><style>{STYLE}</style></head>\
         <body><nav><b>Manta</b></nav><main>{body}</main></body></html>",
        title = escape(title),
    )
}

/// A table: `headers` (a leading `#` marks a numeric, right-aligned column) and rows of cells
/// that are already HTML.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><tr>");
    let numeric: Vec<bool> = headers.iter().map(|h| h.starts_with('#')).collect();
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h.trim_start_matches('#')));
    }
    out.push_str("</tr>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan={} class=muted>none</td></tr>",
            headers.len()
        );
    }
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric.get(i).copied().unwrap_or(false) {
                " class=n"
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// A summary card: a big figure and what it is.
pub fn card(figure: &str, what: &str) -> String {
    format!(
        "<div class=card><b>{}</b><span>{}</span></div>",
        escape(figure),
        escape(what)
    )
}

/// A progress bar `done` of `total`, with the figures beside it.
pub fn progress(done: u64, total: u64) -> String {
    let share = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    format!(
        "<span class=bar><i style='width:{:.0}%'></i></span> {done}/{total}",
        share * 100.0
    )
}

/// A small line chart of `values` (oldest first) scaled to `max` (or their largest), with the
/// last value as its tooltip.
pub fn sparkline(values: &[f64], max: Option<f64>, title: &str) -> String {
    const WIDTH: f64 = 120.0;
    const HEIGHT: f64 = 24.0;
    let top = max
        .unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let step = if values.len() > 1 {
        WIDTH / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = HEIGHT - 1.0 - (v / top).clamp(0.0, 1.0) * (HEIGHT - 2.0);
            format!("{:.1},{y:.1}", i as f64 * step)
        })
        .collect();
    format!(
        "<svg class=spark width={WIDTH} height={HEIGHT} viewBox='0 0 {WIDTH} {HEIGHT}'>\
         <title>{}</title><polyline points='{}'/></svg>",
        escape(title),
        points.join(" ")
    )
}

/// A link to `href` (a path this dashboard serves) reading `text`.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href='{}'>{}</a>", escape(href), escape(text))
}

/// A duration in milliseconds as `850 ms`, `12.3 s`, `4 min 05 s` or `2 h 10 min`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// How long ago `unix_millis` was, from `now_millis`.
pub fn ago(unix_millis: u64, now_millis: u64) -> String {
    if unix_millis == 0 {
        return "—".into();
    }
    format!(
        "{} ago",
        duration_ms(now_millis.saturating_sub(unix_millis))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        let hostile = "<script>alert('x')</script>&\"";
        let escaped = escape(hostile);
        assert!(!escaped.contains('<') && !escaped.contains('\'') && !escaped.contains('"'));
        assert_eq!(
            escaped
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
            hostile
        );
        assert_eq!(url_segment("job-1/../x"), "job-1%2F..%2Fx");
    }

    #[test]
    fn sparklines_stay_in_their_box() {
        let svg = sparkline(&[0.0, 5.0, 10.0, 20.0], Some(10.0), "t");
        for point in svg
            .split("points='")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap()
            .split(' ')
        {
            let (x, y) = point.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (0.0..=120.0).contains(&x) && (0.0..=24.0).contains(&y),
                "{point}"
            );
        }
        assert!(sparkline(&[], None, "empty").contains("points=''"));
    }
}
