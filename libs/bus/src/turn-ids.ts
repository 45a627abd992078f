// Bot turn ids cross services: the dialog names its turns t<n> (n only grows within a call) and ingress, tts and
// the dialog itself order turns by that number. Other turns (ingress's own fallback line) have other ids.

const DIALOG_TURN_ID = /^t(\d{1,15})$/;

/** The number of a dialog turn id (`t<n>`); undefined for any other id. */
export function dialogTurnNumber(turnId: string): number | undefined {
  const match = DIALOG_TURN_ID.exec(turnId);
  return match ? Number(match[1]) : undefined;
}

/**
 * CancelTurn reason for a dialog turn ingress will not play because a later dialog turn began first: tts stops on
 * that turn only, and the dialog's input in progress (which may be saying the later turn) goes on.
 */
export const OVERTAKEN_CANCEL_REASON = "overtaken";
