/**
 * ALLOWED_ORIGINS for WebSocket upgrades. A browser sends `Origin` with every upgrade and lets
 * any page open a WebSocket to any host, with the user's cookies and, for the demo page's
 * pattern, a token the page holds: refusing foreign origins is the server's only defence against
 * cross-site WebSocket hijacking. A client that is not a browser sends no Origin (or any it
 * likes), so an upgrade without one is allowed: the token is what authenticates it.
 */
export class OriginPolicy {
  private readonly exact: ReadonlySet<string>;
  /** Wildcard entries as [scheme + "://", "." + domain, ":port" or ""]. */
  private readonly wildcards: readonly (readonly [string, string, string])[];

  /** `origins` as config.ts validated them (lower-case; `scheme://host[:port]` or `scheme://*.domain[:port]`). */
  constructor(origins: readonly string[]) {
    this.exact = new Set(origins.filter((origin) => !origin.includes("://*.")));
    this.wildcards = origins
      .filter((origin) => origin.includes("://*."))
      .map((origin) => {
        const [scheme = "", rest = ""] = origin.split("://*");
        const portAt = rest.lastIndexOf(":");
        return portAt === -1
          ? [`${scheme}://`, rest, ""]
          : [`${scheme}://`, rest.slice(0, portAt), rest.slice(portAt)];
      });
  }

  /**
   * Whether an upgrade with this `Origin` (and `Host`) header may proceed. The node's own
   * origin is always allowed, so the demo page it serves works with any ALLOWED_ORIGINS: its
   * Origin's host and port are the Host the browser sent with the upgrade. The scheme is not
   * compared, so that it works behind a TLS-terminating proxy (https page, http upgrade); a page
   * with that host and port is the node's, or the proxy's in front of it, whatever its scheme.
   */
  allows(origin: string | undefined, host: string | undefined): boolean {
    if (origin === undefined) return true;
    const lower = origin.toLowerCase();
    if (this.exact.has(lower)) return true;
    const schemeEnd = lower.indexOf("://");
    if (schemeEnd === -1) return false; // "null" (a sandboxed or file: page) and garbage
    const authority = lower.slice(schemeEnd + 3);
    if (host !== undefined && authority === host.toLowerCase()) return true;
    for (const [scheme, domain, port] of this.wildcards) {
      if (!lower.startsWith(scheme)) continue;
      const portAt = authority.lastIndexOf(":");
      const hostname = portAt === -1 ? authority : authority.slice(0, portAt);
      const originPort = portAt === -1 ? "" : authority.slice(portAt);
      // At least one label before the domain: "*.example.com" is not "example.com" itself.
      if (
        originPort === port &&
        hostname.endsWith(domain) &&
        hostname.length > domain.length &&
        /^[a-z0-9-]+(\.[a-z0-9-]+)*$/.test(hostname.slice(0, -domain.length))
      ) {
        return true;
      }
    }
    return false;
  }
}
