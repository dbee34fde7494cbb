// React as the hook under test sees it, except that useState's setters count
// calls made after their component unmounted (window.updatesAfterUnmount).
import * as React from "react";

export * from "react";
export default React;

export function useState(initial) {
  const [value, set] = React.useState(initial);
  const mounted = React.useRef(false);
  React.useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);
  const counted = React.useCallback((next) => {
    if (!mounted.current) window.updatesAfterUnmount = (window.updatesAfterUnmount || 0) + 1;
    set(next);
  }, []);
  return [value, counted];
}
