/**
 * The documents stay true to the repository and to the code:
 * - every Markdown link of README.md, docs/** and bench/*.md resolves inside the repository (a
 *   file, a directory, or a heading of one), and no document points outside it;
 * - every repository path that documents, comments and configuration files mention exists;
 * - the README's configuration table lists exactly the variables the node reads, with the
 *   defaults of config.ts.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { DEV_HOST, defaults, otherVariables } from "@mrezhen/server";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const read = (file: string) => readFileSync(path.join(root, file), "utf8");

/** Files git knows (committed or not yet, but not ignored): what a fresh clone would hold. */
const files = execFileSync("git", ["ls-files", "--cached", "--others", "--exclude-standard"], {
  cwd: root,
  encoding: "utf8",
})
  .split("\n")
  .filter((file) => file !== "" && existsSync(path.join(root, file)));

const documents = files.filter(
  (file) => file === "README.md" || /^docs\/.*\.md$/.test(file) || /^bench\/[^/]+\.md$/.test(file),
);

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

function anchorsOf(file: string): Set<string> {
  const text = read(file).replace(/```[\s\S]*?```/g, "");
  return new Set([...text.matchAll(/^#{1,6}\s+(.+)$/gm)].map((match) => slug(match[1] as string)));
}

/** Markdown links `[text](target)` outside code blocks and code spans. */
function linksOf(text: string): string[] {
  const prose = text.replace(/```[\s\S]*?```/g, "").replace(/`[^`\n]*`/g, "``");
  return [...prose.matchAll(/\]\(([^()\s]+)(?:\s+"[^"]*")?\)/g)].map((match) => match[1] as string);
}

/** What is wrong with `target`, a link in `file`, if anything. */
function brokenLink(file: string, target: string): string | undefined {
  if (/^(https?|mailto):/.test(target)) return undefined;
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return `an unexpected scheme`;
  const [pathPart = "", anchor] = target.split("#", 2);
  const resolved =
    pathPart === ""
      ? file
      : path.posix.normalize(path.posix.join(path.posix.dirname(file), pathPart));
  if (resolved.startsWith("../") || resolved === "..") return "outside the repository";
  const absolute = path.join(root, resolved);
  if (!existsSync(absolute)) return "no such file";
  if (anchor !== undefined && anchor !== "") {
    if (statSync(absolute).isDirectory() || !resolved.endsWith(".md"))
      return "an anchor into a non-Markdown file";
    if (!anchorsOf(resolved).has(anchor)) return `no heading #${anchor} in ${resolved}`;
  }
  return undefined;
}

/** Documents, code and configuration: where references to repository paths are written. */
const scanned = files.filter(
  (file) =>
    /\.(md|ts|mts|mjs|ya?ml|template|html)$|(^|\/)Dockerfile$|^\.ci\/run$/.test(file) &&
    !file.endsWith("pnpm-lock.yaml"),
);

/** Top-level directories whose paths documents and comments mention. */
const TOP = "(?:apps|packages|docs|bench|nginx|docker|\\.ci)";
/** A repository path: a top-level directory at a word start, then path characters. */
const PATH_REFERENCE = new RegExp(`(?<![\\w./@=-])${TOP}/[\\w./*-]*[\\w/*]`, "g");

/** Paths made by a build or a run, which a fresh clone does not have, and globs. */
function generated(reference: string): boolean {
  return /(^|\/)dist(\/|$)|^bench\/out[\w-]*\.json$|\.tsbuildinfo$|\*/.test(reference);
}

describe("links", () => {
  it("finds the documents to check", () => {
    expect(documents).toEqual(
      expect.arrayContaining(["README.md", "docs/deployment.md", "bench/README.md"]),
    );
  });

  it.each(documents)("%s: every link resolves inside the repository", (file) => {
    const broken = linksOf(read(file)).flatMap((target) => {
      const why = brokenLink(file, target);
      return why === undefined ? [] : [`${target}: ${why}`];
    });
    expect(broken).toEqual([]);
  });

  it("no document, comment or configuration file climbs out of the repository", () => {
    // Relative references (`../x`, `../../x`) resolved from the file that holds them: documents
    // must say what users need in the project's own words, never point at a sibling checkout.
    const outside = scanned.flatMap((file) =>
      [...read(file).matchAll(/(?<![\w.])(?:\.\.\/)+[\w.-]+/g)]
        .map((match) => match[0] as string)
        .filter((reference) =>
          path.posix
            .normalize(path.posix.join(path.posix.dirname(file), reference))
            .startsWith("../"),
        )
        .map((reference) => `${file}: ${reference}`),
    );
    expect(outside).toEqual([]);
  });

  it("every repository path mentioned in documents, code and configuration exists", () => {
    const missing = scanned.flatMap((file) =>
      [...read(file).matchAll(PATH_REFERENCE)]
        .map((match) => (match[0] as string).replace(/\.$/, ""))
        .filter((reference) => !generated(reference) && !existsSync(path.join(root, reference)))
        .map((reference) => `${file}: ${reference}`),
    );
    expect(missing).toEqual([]);
  });
});

describe("the README's configuration table", () => {
  /** `variable` → its default column, from the table under "## Configuration". */
  function table(): Map<string, string> {
    const readme = read("README.md");
    const section = readme.slice(
      readme.indexOf("## Configuration"),
      readme.indexOf("\n## ", readme.indexOf("## Configuration") + 3),
    );
    const rows = new Map<string, string>();
    for (const match of section.matchAll(/^\|\s*`([A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|/gm)) {
      rows.set(match[1] as string, match[2] as string);
    }
    return rows;
  }

  it("lists exactly the variables the node reads", () => {
    const listed = [...table().keys()].sort();
    expect(listed).toEqual([...Object.keys(defaults), ...otherVariables].sort());
  });

  it("gives each default as config.ts has it", () => {
    const rows = table();
    for (const [name, value] of Object.entries(defaults)) {
      // The first code span of the default column is the value itself; words may follow.
      const shown = /`([^`]*)`/.exec(rows.get(name) ?? "")?.[1];
      expect(shown, name).toBe(String(value));
    }
    // HOST's default depends on the secret: the row says both.
    expect(rows.get("HOST")).toContain(`\`${DEV_HOST}\``);
  });
});
