/**
 * The server API's OpenAPI document, generated from the route schemas: it must validate against
 * the OpenAPI specification (the official schema, through @apidevtools/swagger-parser) and list
 * every route, so CI catches a schema that no client generator could read.
 */
import SwaggerParser from "@apidevtools/swagger-parser";
import type { OpenAPI } from "openapi-types";
import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";

describe("the server API's OpenAPI document", () => {
  it("is served at /api/v1/openapi.json, validates, and describes every route", async () => {
    const node = await startNode({ API_KEY: "openapi-test-key-0123456789" });
    const response = await fetch(`${node.url}/api/v1/openapi.json`);
    expect(response.status).toBe(200);
    const document = (await response.json()) as OpenAPI.Document & {
      openapi: string;
      paths: Record<string, Record<string, unknown>>;
    };
    expect(document.openapi).toBe("3.1.0");
    // validate() dereferences in place: give it a copy.
    await expect(SwaggerParser.validate(structuredClone(document))).resolves.toBeDefined();
    expect(
      Object.entries(document.paths)
        .flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method} ${path}`))
        .sort(),
    ).toEqual([
      "get /api/v1/conversations/{a}/{b}/messages",
      "get /api/v1/presence",
      "get /api/v1/users/{id}",
      "post /api/v1/messages",
      "post /api/v1/users/{id}/disconnect",
      "post /api/v1/users/{id}/revoke",
    ]);
  });
});
