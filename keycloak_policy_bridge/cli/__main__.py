from keycloak_policy_bridge.cli import main

main()
