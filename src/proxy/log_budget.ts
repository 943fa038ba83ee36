/**
 * {@linkcode LogBudget}: at most so many log lines of one kind a second, so that a flood (of
 * refused connections, say) cannot flood the log; the lines held back are counted and the next
 * line let through says how many there were.
 *
 * @module
 */

/** Lets through at most `perSecond` lines a second; see the module docs. */
export class LogBudget {
  #max: number;
  #clock: () => number;
  #windowStart = -Infinity;
  #used = 0;
  #held = 0;

  /** A budget of `perSecond` lines a second on `clock` (ms). */
  constructor(perSecond = 10, clock: () => number = () => performance.now()) {
    this.#max = perSecond;
    this.#clock = clock;
  }

  /**
   * Whether a line may be logged now: `false` when the second's budget is spent (the line is
   * counted as held back), else how many lines were held back since the last one let through.
   */
  take(): number | false {
    const now = this.#clock();
    if (now - this.#windowStart >= 1000) {
      this.#windowStart = now;
      this.#used = 0;
    }
    if (this.#used >= this.#max) {
      this.#held++;
      return false;
    }
    this.#used++;
    const held = this.#held;
    this.#held = 0;
    return held;
  }
}
