/** A refused token; `reason` is safe to show the client and to log (it never holds the token). */
export class AuthError extends Error {
  override readonly name = "AuthError";
  constructor(readonly reason: string) {
    super(reason);
  }
}
